"""LLM stage: auxiliary knowledge for MNER and entity expansion into referring expressions."""
