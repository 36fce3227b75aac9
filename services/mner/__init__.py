"""MNER stage: named entities (PER/LOC/ORG/MISC) of the post text."""
