"""LLM stage helpers: OpenAI-compatible HTTP client, generation cache, replay of released
knowledge, image descriptions, in-context examples and the ``riveg llm`` commands."""
