"""Visual grounding stage: a box in original-image pixels for each visible entity."""
