"""Bounds on what one post may hold, and the checks that refuse a post beyond them.

The defaults here are the defaults of the ``[limits]`` settings section; callers that have
settings pass the configured values.
"""

from __future__ import annotations

from riveg.core.errors import InvalidInput

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest image file (20 MiB)."""
MAX_IMAGE_PIXELS = 4096 * 4096
"""Most pixels of an image: tweet images are at most 4096 px a side."""
MAX_TEXT_CHARS = 2000
"""Longest post text, in characters."""
MAX_ENTITIES = 32
"""Most entities (or boxes) in one stage call."""


def check_text(text: str, max_chars: int = MAX_TEXT_CHARS, *, required: bool = True) -> None:
    """InvalidInput when the text is empty (if ``required``), longer than ``max_chars``
    characters, or not encodable as UTF-8 (a lone surrogate)."""
    if required and not text.strip():
        raise InvalidInput("the post text is empty")
    if len(text) > max_chars:
        raise InvalidInput(
            f"the post text is too long: {len(text)} characters, the limit is {max_chars}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"the post text is not valid Unicode: character {exc.start + 1} is "
            f"{text[exc.start]!r} (a lone surrogate, e.g. from bytes that are not UTF-8)"
        ) from None


def check_image_bytes(size: int, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """InvalidInput when an image file of ``size`` bytes is over ``max_bytes``."""
    if size > max_bytes:
        raise InvalidInput(
            f"the image is too large: {size:,} bytes, the limit is {max_bytes:,} bytes"
        )


def check_count(count: int, max_count: int = MAX_ENTITIES, what: str = "entities") -> None:
    """InvalidInput when a call carries more than ``max_count`` entities (or boxes)."""
    if count > max_count:
        raise InvalidInput(f"too many {what}: {count}, the limit is {max_count} per call")
