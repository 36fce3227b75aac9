"""Readers of the benchmarks' released image captions (BLIP-2, mPLUG-Owl), keyed by image id."""

from __future__ import annotations

from pathlib import Path


def read_captions_blip2(path: str | Path) -> dict[str, str]:
    """``<image id>.jpg :<caption>`` lines -> {image id: caption}."""
    captions = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            name, sep, caption = line.rstrip("\n").partition(" :")
            if sep:
                captions[name.strip().removesuffix(".jpg")] = caption.strip()
    return captions


def read_captions_mplug(path: str | Path) -> dict[str, str]:
    """``imgid:<id>###<description>`` records (possibly multi-line) -> {image id: text}."""
    captions: dict[str, list[str]] = {}
    current = None
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("imgid:") and "###" in line:
                current, _, rest = line[len("imgid:") :].partition("###")
                captions[current] = [rest.strip()]
            elif current is not None and line.strip():
                captions[current].append(line.strip())
    return {key: " ".join(value) for key, value in captions.items()}
