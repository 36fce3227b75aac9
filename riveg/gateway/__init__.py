"""The HTTP API and the intake of posts (above the orchestration)."""
