"""A picture of a result: masks, boxes and labels on the image, all entities listed below."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from riveg.core.images import rle_to_mask

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60)]  # fmt: skip
LINE_HEIGHT = 16


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_overlay(image: Image.Image, result: dict[str, Any]) -> Image.Image:
    """The image with each grounded entity's mask (tinted), box and label, and a legend strip
    listing every entity with its type, expansion and whether it was grounded."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    entities = result.get("entities", [])
    for index, entity in enumerate(entities):
        if entity.get("mask"):
            mask = rle_to_mask(entity["mask"]).astype(bool)
            if mask.shape == base.shape[:2]:
                colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
                base[mask] = 0.55 * base[mask] + 0.45 * colour
    canvas_image = Image.fromarray(base.astype(np.uint8))
    font = _font(max(12, image.width // 45))
    legend_font = _font(13)
    legend_height = LINE_HEIGHT * (len(entities) + 1) + 8
    canvas = Image.new("RGB", (image.width, image.height + legend_height), (250, 250, 250))
    canvas.paste(canvas_image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    line_width = max(2, image.width // 250)
    for index, entity in enumerate(entities):
        colour = PALETTE[index % len(PALETTE)]
        if entity.get("box"):
            x1, y1, x2, y2 = entity["box"]
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
            label = f"{entity['text']} ({entity['type']})"
            left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
            ty = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
            draw.rectangle((x1, ty, x1 + (right - left) + 6, ty + (bottom - top) + 4), fill=colour)
            draw.text((x1 + 3, ty + 1), label, fill=(255, 255, 255), font=font)
    y = image.height + 4
    draw.text(
        (6, y),
        f"{len(entities)} entities, post {result.get('id', '')}",
        fill=(0, 0, 0),
        font=legend_font,
    )
    for index, entity in enumerate(entities):
        y += LINE_HEIGHT
        grounded = (
            "box+mask" if entity.get("mask") else ("box" if entity.get("box") else "not visible")
        )
        score = entity.get("ve_score")
        text = f"{entity.get('expansion') or entity['text']}: {grounded}" + (
            f" (VE {score:.2f})" if isinstance(score, float) else ""
        )
        draw.text(
            (6, y),
            text,
            fill=PALETTE[index % len(PALETTE)] if entity.get("box") else (90, 90, 90),
            font=legend_font,
        )
    return canvas
