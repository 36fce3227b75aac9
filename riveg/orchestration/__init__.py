"""Orchestration: the Celery app, one task per stage, the per-post chain, embedded runtime."""
