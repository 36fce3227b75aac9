"""Shared helpers of the transformers vision backends: the model folder, the query text, boxes.

Weights always come from a local folder (the model store's fetched version); nothing is ever
downloaded (``local_files_only``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

P = TypeVar("P")
R = TypeVar("R", bound=list)

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


def check_image(image: np.ndarray) -> np.ndarray:
    """The image itself when it is a non-empty HxWx3 array, else ValueError (a processor would
    read a 4-D array as several images, and some resize an empty one without complaint)."""
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {shape}")
    return image


def batch_forward(
    items: Sequence[tuple[Any, ...]],
    prepare: Callable[..., P | None],
    forward: Callable[[list[P]], Sequence[R | Exception]],
    fallback: Callable[[list[tuple[Any, ...]]], list[R | Exception]],
) -> list[R | Exception]:
    """A backend's ``<name>_batch``: several calls in one model forward.

    ``prepare(*item)`` runs on each item alone: its exception is that item's result, and None
    (nothing to look for) answers ``[]`` without a forward. ``forward`` then runs the prepared
    items together and returns one result (or exception) per item. When that joint forward
    fails for several items, they run again through ``fallback`` (the single-call method one
    item at a time, ``Backend.one_by_one``), so only a bad item fails.
    """
    results: list[Any] = [None] * len(items)
    ready: list[int] = []
    prepared: list[P] = []
    for index, item in enumerate(items):
        try:
            value = prepare(*item)
        except Exception as exc:
            results[index] = exc
            continue
        if value is None:
            results[index] = []
        else:
            ready.append(index)
            prepared.append(value)
    if prepared:
        outputs: Sequence[R | Exception]
        try:
            outputs = forward(prepared)
            if len(outputs) != len(prepared):
                raise RuntimeError(f"{len(outputs)} results for {len(prepared)} items")
        except Exception as exc:
            outputs = [exc] if len(prepared) == 1 else fallback([items[i] for i in ready])
        for index, output in zip(ready, outputs, strict=True):
            results[index] = output
    return results


def only(results: Sequence[R | Exception]) -> R:
    """The result of a batch of one item, its exception raised."""
    (result,) = results
    if isinstance(result, Exception):
        raise result
    return result


def image_inputs(processor: Any, image: np.ndarray) -> Any:
    """The image processor's tensors (``pixel_values``, ...) of one checked HxWx3 image."""
    return processor(
        images=check_image(image), return_tensors="pt", input_data_format="channels_last"
    )


def torch_threads(settings: Any) -> None:
    """Apply RIVEG_MODELS_TORCH_THREADS (0 keeps torch's default)."""
    import torch  # lazy: only model-store backends need torch; the default ones never load it

    if settings.models.torch_threads:
        torch.set_num_threads(settings.models.torch_threads)


WARM_IMAGE = np.full((48, 64, 3), 127, np.uint8)
# PER, so that person-detector backends run their detector too.
WARM_ENTITY = {"text": "warm up", "start": 0, "end": 7, "type": "PER", "expression": ""}
