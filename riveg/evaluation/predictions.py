"""Reading the pipeline's result JSONL (and gold-mask files of the same schema) for scoring.

One object per line: ``{"id": IMGID, "text"?: str, "entities": [{"text", "type", "start"?,
"end"?, "box"?: [x1, y1, x2, y2] | null, "mask"?: {"size": [h, w], "counts": str} | null}]}``.
Other keys are ignored. Malformed input raises ``PredictionError`` naming the file and line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools import mask as coco_mask

from riveg.data.conll import normalise_type

Box = tuple[float, float, float, float]


class PredictionError(ValueError):
    """A prediction file is malformed; the message names the file and line."""


@dataclass
class PredEntity:
    """One predicted entity; ``start``/``end`` are None when the prediction gives no span."""

    text: str
    type: str
    start: int | None = None
    end: int | None = None
    box: Box | None = None
    mask: dict[str, Any] | None = None
    has_mask: bool = False  # whether the object carried a "mask" key at all (null counts)


@dataclass
class PredPost:
    """The predictions for one post; ``text`` is the post text the offsets refer to, if given."""

    id: str
    entities: list[PredEntity] = field(default_factory=list)
    text: str | None = None
    line: int = 0

    def usable_span(self, entity: PredEntity, gold_text: str) -> tuple[int, int] | None:
        """The entity's span when it lines up with ``gold_text`` (the tokens joined by single
        spaces): offsets given, the post's text (if given) equal to ``gold_text``, and
        ``gold_text[start:end]`` equal to the entity's text. Else None (match by string)."""
        if entity.start is None or entity.end is None:
            return None
        if self.text is not None and self.text != gold_text:
            return None
        if not 0 <= entity.start < entity.end <= len(gold_text):
            return None
        if gold_text[entity.start : entity.end] != entity.text:
            return None
        return entity.start, entity.end


def _box(value: Any, where: str) -> Box | None:
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
    ):
        raise PredictionError(f"{where}: 'box' must be null or 4 finite numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _mask(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    size = value.get("size") if isinstance(value, dict) else None
    counts = value.get("counts") if isinstance(value, dict) else None
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
        or not isinstance(counts, str)
    ):
        raise PredictionError(
            f"{where}: 'mask' must be null or COCO RLE {{'size': [h, w], 'counts': str}}"
        )
    rle = {"size": size, "counts": counts.encode()}
    try:
        area = int(coco_mask.area(rle))
    except Exception as exc:  # pycocotools raises assorted errors on bad strings
        raise PredictionError(f"{where}: 'mask' counts cannot be decoded ({exc})") from exc
    if not 0 <= area <= size[0] * size[1]:
        raise PredictionError(f"{where}: 'mask' counts do not fit its size {size}")
    return rle


def _offset(value: Any, name: str, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PredictionError(f"{where}: {name!r} must be a non-negative integer or null")
    return value


def _entity(raw: Any, where: str) -> PredEntity:
    if not isinstance(raw, dict):
        raise PredictionError(f"{where}: an entity must be a JSON object")
    text, kind = raw.get("text"), raw.get("type")
    if not isinstance(text, str) or not text:
        raise PredictionError(f"{where}: entity 'text' must be a non-empty string")
    if not isinstance(kind, str):
        raise PredictionError(f"{where}: entity {text!r} has no 'type' string")
    try:
        kind = normalise_type(kind)
    except ValueError as exc:
        raise PredictionError(f"{where}: entity {text!r}: {exc}") from None
    start = _offset(raw.get("start"), "start", where)
    end = _offset(raw.get("end"), "end", where)
    if (start is None) != (end is None):
        raise PredictionError(f"{where}: entity {text!r} gives only one of 'start' and 'end'")
    return PredEntity(
        text=text,
        type=kind,
        start=start,
        end=end,
        box=_box(raw.get("box"), f"{where}: entity {text!r}"),
        mask=_mask(raw.get("mask"), f"{where}: entity {text!r}"),
        has_mask="mask" in raw,
    )


def parse_prediction_line(line: str, where: str) -> PredPost:
    """One JSONL line as a ``PredPost``; ``where`` prefixes error messages (``file:line``)."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PredictionError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise PredictionError(f"{where}: expected a JSON object")
    post_id = raw.get("id")
    if isinstance(post_id, int) and not isinstance(post_id, bool):
        post_id = str(post_id)
    if not isinstance(post_id, str) or not post_id:
        raise PredictionError(f"{where}: 'id' must be a non-empty string (the IMGID)")
    entities = raw.get("entities")
    if entities is None and isinstance(raw.get("error"), str):
        return PredPost(post_id, [], None)  # a post `riveg batch` could not process: no entities
    if not isinstance(entities, list):
        raise PredictionError(f"{where}: 'entities' must be a list")
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise PredictionError(f"{where}: 'text' must be a string")
    return PredPost(post_id, [_entity(e, where) for e in entities], text)


def read_predictions(path: str | Path) -> dict[str, PredPost]:
    """Posts of a result JSONL by id (blank lines skipped); PredictionError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: file not found")
    posts: dict[str, PredPost] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            post = parse_prediction_line(line, where)
            if post.id in posts:
                raise PredictionError(
                    f"{where}: id {post.id!r} already given on line {posts[post.id].line}"
                )
            post.line = number
            posts[post.id] = post
    return posts
