"""Shared helpers of the transformers vision backends: the model folder, the query text, boxes.

Weights always come from a local folder (the model store's fetched version); nothing is ever
downloaded (``local_files_only``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

_TYPE_MARK = re.compile(r"\((PER|LOC|ORG|MISC)\)-?")


def model_folder(backend: Any) -> Path:
    """The backend's model folder; a clear error when it was created without one."""
    folder = getattr(backend, "model_dir", None)
    if folder is None:
        raise ValueError(
            f"backend {type(backend).__name__} needs weights from the model store: set "
            f"RIVEG_<STAGE>_MODEL=name@version for a version holding its files"
        )
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    return folder


def model_options(folder: Path, file: str) -> dict[str, Any]:
    """Backend options stored beside the weights (``riveg-ve.json``, ...); {} when absent."""
    path = folder / file
    return json.loads(path.read_text()) if path.is_file() else {}


def query_text(entity: dict[str, Any]) -> str:
    """The phrase a detector looks for: the referring expression without its ``(TYPE)-`` mark,
    else the entity text (``Eileen Collins(PER)-an astronaut`` -> ``Eileen Collins an
    astronaut``)."""
    expression = (entity.get("expression") or "").strip()
    if not expression:
        return entity["text"]
    return " ".join(_TYPE_MARK.sub(" ", expression).split())


def cxcywh_to_pixels(box: np.ndarray, scale_x: float, scale_y: float) -> list[float]:
    """A normalised centre box as [x1, y1, x2, y2] pixels of a frame scale_x x scale_y wide."""
    cx, cy, w, h = (float(v) for v in box)
    return [
        (cx - w / 2) * scale_x,
        (cy - h / 2) * scale_y,
        (cx + w / 2) * scale_x,
        (cy + h / 2) * scale_y,
    ]


def clip_box(box: list[float], width: int, height: int) -> list[float]:
    """The box clipped to the image, rounded to 0.01 px."""
    x1, y1, x2, y2 = box
    return [
        round(min(max(x1, 0.0), float(width)), 2),
        round(min(max(y1, 0.0), float(height)), 2),
        round(min(max(x2, 0.0), float(width)), 2),
        round(min(max(y2, 0.0), float(height)), 2),
    ]


def torch_threads(settings: Any) -> None:
    """Apply RIVEG_MODELS_TORCH_THREADS (0 keeps torch's default)."""
    import torch  # lazy: only model-store backends need torch; the default ones never load it

    if settings.models.torch_threads:
        torch.set_num_threads(settings.models.torch_threads)


WARM_IMAGE = np.full((48, 64, 3), 127, np.uint8)
# PER, so that person-detector backends run their detector too.
WARM_ENTITY = {"text": "warm up", "start": 0, "end": 7, "type": "PER", "expression": ""}
