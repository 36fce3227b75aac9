"""Image decoding and mask encoding shared by the services and the orchestrator."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as coco_mask

from riveg.core.errors import InvalidInput
from riveg.core.storage import ObjectStore

MAX_PIXELS = 64_000_000


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes into an upright RGB image; InvalidInput when they are not an image."""
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as raw:
            if raw.width * raw.height > MAX_PIXELS:
                raise InvalidInput(f"the image is too large ({raw.width}x{raw.height})")
            image = ImageOps.exif_transpose(raw).convert("RGB")
    except UnidentifiedImageError as exc:
        raise InvalidInput(f"the {len(data)} bytes given as the image are not an image") from exc
    except (OSError, SyntaxError) as exc:
        raise InvalidInput(f"the image is damaged or truncated: {exc}") from exc
    return image


def image_array(data: bytes) -> np.ndarray:
    """Decode image bytes into an HxWx3 uint8 RGB array."""
    return np.asarray(decode_image(data), dtype=np.uint8)


def encode_png(image: Image.Image | np.ndarray) -> bytes:
    """PNG bytes of an image or a 2-D/3-D uint8 array."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a binary HxW mask: ``{"size": [h, w], "counts": str}``."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode COCO compressed RLE back into a binary HxW uint8 mask."""
    return coco_mask.decode({"size": list(rle["size"]), "counts": rle["counts"].encode()})


def mask_png(mask: np.ndarray) -> bytes:
    """A binary mask as an 8-bit PNG (0 or 255)."""
    return encode_png((mask > 0).astype(np.uint8) * 255)


def png_mask(data: bytes) -> np.ndarray:
    """Read a mask PNG back as a binary HxW uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return (np.asarray(image.convert("L")) > 127).astype(np.uint8)


def fetch_image(store: ObjectStore, key: str) -> np.ndarray:
    """The stored image under key as an HxWx3 uint8 RGB array."""
    if not key:
        raise InvalidInput("the request names no image key")
    return image_array(store.get_bytes(key))
