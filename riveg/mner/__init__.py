"""PLIM-style MNER: an encoder + CRF over a post and (optionally) LLM-written knowledge."""
