"""Errors every layer shares."""

from __future__ import annotations


class InvalidInput(ValueError):
    """The request cannot be served as given (bad image bytes, empty text, ...); retrying the
    same input cannot help."""
