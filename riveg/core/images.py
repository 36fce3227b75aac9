"""Image decoding and mask encoding shared by the services and the orchestrator."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as coco_mask

from riveg.core.errors import InvalidInput
from riveg.core.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, check_image_bytes
from riveg.core.storage import ObjectStore

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# What a decoder may raise on bytes that only look like an image (a damaged or forged file).
DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
    ZeroDivisionError,
)  # fmt: skip
# Pillow's own decompression-bomb check (a warning, then an error past twice its limit) is
# replaced by ours: open_image reads the size from the header and applies the configured limit
# before any pixel is decoded, so every refusal names our limit.
Image.MAX_IMAGE_PIXELS = None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _too_many_pixels(size: tuple[int, int], max_pixels: int) -> InvalidInput:
    pixels = size[0] * size[1]
    return InvalidInput(
        f"the image is too large: {size[0]}x{size[1]} = {pixels:,} pixels, the limit is "
        f"{max_pixels:,} pixels"
    )


def open_image(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open image bytes lazily: only the header is read, and checked against the limits (bytes,
    then width x height) before any pixel is decoded. InvalidInput when the bytes are empty,
    too many, not an image, or an image of too many pixels."""
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    check_image_bytes(len(data), max_bytes)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise InvalidInput(f"the {len(data)} bytes given as the image are not an image") from exc
    except DECODE_ERRORS as exc:
        raise InvalidInput(f"the image is damaged or truncated: {_one_line(exc)}") from exc
    if image.width * image.height > max_pixels:
        image.close()
        raise _too_many_pixels(image.size, max_pixels)
    return image


def check_image(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """Width and height of image bytes from the header, decoding no pixels; InvalidInput as
    :func:`open_image` says."""
    with open_image(data, max_bytes=max_bytes, max_pixels=max_pixels) as image:
        return image.size


def image_content_type(data: bytes) -> str:
    """The MIME type of image bytes from their header (``application/octet-stream`` when Pillow
    does not know the format)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except (UnidentifiedImageError, *DECODE_ERRORS):
        return "application/octet-stream"


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of an image of any mode: 16-bit and 32-bit gray scaled down (not
    clipped to white), float gray of 0..1 scaled up, transparency composited over white."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
            values = np.clip(values, 0, 65535) >> 8  # the 16-bit range onto 0..255
        gray = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0  # a 0..1 float image
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode image bytes into an upright 8-bit RGB image (EXIF orientation applied). The byte
    size and the pixel count are checked first; InvalidInput when they are over the limits or
    the bytes are not a (whole) image."""
    with open_image(data, max_bytes=max_bytes, max_pixels=max_pixels) as raw:
        try:
            return to_rgb(ImageOps.exif_transpose(raw))
        except UnidentifiedImageError as exc:
            raise InvalidInput(f"the image cannot be decoded: {_one_line(exc)}") from exc
        except DECODE_ERRORS as exc:
            raise InvalidInput(f"the image is damaged or truncated: {_one_line(exc)}") from exc


def image_array(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode image bytes into an HxWx3 uint8 RGB array (limits as :func:`decode_image`)."""
    return np.asarray(decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels), np.uint8)


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


def fetch_image(
    store: ObjectStore,
    key: str,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """The stored image under key as an HxWx3 uint8 RGB array (limits as :func:`decode_image`)."""
    if not key:
        raise InvalidInput("the request names no image key")
    return image_array(store.get_bytes(key), max_bytes=max_bytes, max_pixels=max_pixels)
