"""GMNER, MNER, EEG (and SMNER, EES with masks) scoring of result JSONL against Twitter-GMNER.

Rules (the GMNER papers'): a predicted entity is correct when its span, its type and its
grounding are right; grounding is right when gold and prediction are both None, or the predicted
box (mask) has IoU >= the threshold with any gold box (mask) of that entity. Each gold entity is
matched at most once; micro precision, recall and F1. EEG and EES ignore the type; MNER ignores
the grounding. Matching is ``spans.align_to_gold`` and counting is ``spans.score_spans``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycocotools import mask as coco_mask

from riveg.data.conll import Post
from riveg.data.gmner import GroundedPost, ground_post
from riveg.evaluation.predictions import PredEntity, PredPost
from riveg.evaluation.spans import align_to_gold, score_spans

SWEEP_THRESHOLDS = [round(0.5 + 0.05 * step, 2) for step in range(10)]  # 0.5 .. 0.95
BOTH_NONE = math.inf  # grounding value when gold and prediction are both None: right at any IoU
ONE_NONE = -math.inf  # exactly one side is None, or the prediction matches no gold entity


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes in continuous pixel coordinates (area = w * h, no +1,
    as RiVEG's scorer); inverted boxes have zero area; 0 when the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def mask_iou(pred: Mapping[str, Any], gold: Mapping[str, Any]) -> float:
    """Pixel IoU of two COCO RLE masks (``counts`` as bytes); ValueError when sizes differ."""
    if list(pred["size"]) != list(gold["size"]):
        raise ValueError(f"mask size {list(pred['size'])} differs from gold {list(gold['size'])}")
    value = float(coco_mask.iou([dict(pred)], [dict(gold)], [0])[0][0])
    return max(value, 0.0)


def grounding_value(pred: Any, gold: Sequence[Any] | None, iou: Any = box_iou) -> float:
    """The largest IoU threshold at which ``pred`` grounds right against ``gold`` (a list of
    boxes/masks, or None): ``BOTH_NONE`` when both are None, ``ONE_NONE`` when one is."""
    if pred is None and not gold:
        return BOTH_NONE
    if pred is None or not gold:
        return ONE_NONE
    return max(iou(pred, item) for item in gold)


@dataclass
class ScoredPost:
    """One post aligned for scoring: gold entities, predictions, and per prediction the gold
    entity it is matched against and its box (mask) grounding value."""

    id: str
    gold: list[tuple[int, int, str, str]]
    pred: list[PredEntity]
    match: list[int | None]
    box_value: list[float]
    mask_value: list[float] | None = None


@dataclass
class Alignment:
    """All posts aligned, with what the alignment had to do (for the report)."""

    posts: list[ScoredPost]
    by_span: int = 0
    by_string: int = 0
    unmatched: int = 0
    missing_posts: list[str] = field(default_factory=list)
    extra_posts: list[str] = field(default_factory=list)
    masks: bool = False

    def summary(self) -> dict[str, Any]:
        """Counts of how predictions were matched and which posts were missing or extra."""
        return {
            "pred_by_span": self.by_span,
            "pred_by_string": self.by_string,
            "pred_matching_no_gold": self.unmatched,
            "gold_posts_without_prediction": len(self.missing_posts),
            "predicted_posts_not_in_gold": len(self.extra_posts),
        }


def _gold_tuples(post: GroundedPost) -> list[tuple[int, int, str, str]]:
    return [(e.start, e.end, e.text, e.type) for e in post.entities]


def align_post(
    post_text: str, gold: Sequence[tuple[int, int, str, str]], pred: PredPost | None
) -> tuple[list[int | None], int, int]:
    """Align one post's predictions with its gold (start, end, text, type) entities.

    A prediction's span is used when it lines up with ``post_text`` (``PredPost.usable_span``),
    else its exact surface string. Returns the matches and how many were by span / by string.
    """
    if pred is None:
        return [], 0, 0
    keys: list[tuple[int | None, int | None, str, str]] = []
    by_span = 0
    for entity in pred.entities:
        span = pred.usable_span(entity, post_text)
        by_span += span is not None
        keys.append((*(span or (None, None)), entity.text, entity.type))
    return align_to_gold(gold, keys), by_span, len(keys) - by_span


def align_masks(
    posts: Sequence[GroundedPost], gold_masks: Mapping[str, PredPost]
) -> dict[str, list[dict[str, Any] | None]]:
    """Per post, the gold mask of each gold entity (None where the mask file gives none).

    Mask-file entities are matched to gold entities like predictions are (span, else string).
    """
    masks: dict[str, list[dict[str, Any] | None]] = {}
    for post in posts:
        gold = _gold_tuples(post)
        per_entity: list[dict[str, Any] | None] = [None] * len(gold)
        record = gold_masks.get(post.id)
        if record is not None:
            match, _, _ = align_post(post.text, gold, record)
            for entity, index in zip(record.entities, match, strict=True):
                if index is not None and entity.mask is not None:
                    per_entity[index] = entity.mask
        masks[post.id] = per_entity
    return masks


def align(
    posts: Sequence[GroundedPost],
    predictions: Mapping[str, PredPost],
    gold_masks: Mapping[str, PredPost] | None = None,
) -> Alignment:
    """Match predictions to gold and compute each prediction's box (and mask) IoU once, so that
    scores at any threshold are a cheap count. Masks are scored when ``gold_masks`` is given
    and some prediction carries a ``mask`` key."""
    gold_ids = {post.id for post in posts}
    with_masks = gold_masks is not None and any(
        entity.has_mask for pred in predictions.values() for entity in pred.entities
    )
    gold_mask_lists = align_masks(posts, gold_masks) if with_masks and gold_masks else {}
    result = Alignment([], masks=with_masks)
    result.extra_posts = sorted(set(predictions) - gold_ids)
    for post in posts:
        gold = _gold_tuples(post)
        pred = predictions.get(post.id)
        if pred is None:
            result.missing_posts.append(post.id)
        match, by_span, by_string = align_post(post.text, gold, pred)
        result.by_span += by_span
        result.by_string += by_string
        result.unmatched += sum(index is None for index in match)
        entities = pred.entities if pred is not None else []
        box_value = [
            grounding_value(e.box, post.entities[i].boxes) if i is not None else ONE_NONE
            for e, i in zip(entities, match, strict=True)
        ]
        mask_value = None
        if with_masks:
            gold_masks_here = gold_mask_lists[post.id]
            mask_value = []
            for entity, index in zip(entities, match, strict=True):
                if index is None:
                    mask_value.append(ONE_NONE)
                    continue
                gold_mask = gold_masks_here[index]
                try:
                    mask_value.append(
                        grounding_value(entity.mask, [gold_mask] if gold_mask else None, mask_iou)
                    )
                except ValueError as exc:
                    raise ValueError(f"post {post.id}, entity {entity.text!r}: {exc}") from None
        result.posts.append(ScoredPost(post.id, gold, entities, match, box_value, mask_value))
    return result


def _score(
    alignment: Alignment, values: str | None, threshold: float, typed: bool
) -> dict[str, Any]:
    """Counts of one metric: grounding from ``values`` ("box_value", "mask_value" or None for
    none), with or without the type; keys equal exactly when a prediction is correct."""
    gold_keys: list[list[tuple[Any, ...]]] = []
    pred_keys: list[list[tuple[Any, ...]]] = []
    for post in alignment.posts:
        gold_keys.append(
            [(start, end, True, kind if typed else "*") for start, end, _, kind in post.gold]
        )
        grounding = getattr(post, values) if values else None
        keys = []
        for number, (entity, index) in enumerate(zip(post.pred, post.match, strict=True)):
            kind = entity.type if typed else "*"
            if index is None:
                keys.append((("no gold", number), None, False, kind))
                continue
            start, end = post.gold[index][:2]
            ok = grounding is None or grounding[number] >= threshold
            keys.append((start, end, ok, kind))
        pred_keys.append(keys)
    scores = score_spans(gold_keys, pred_keys)
    if not typed:
        scores.pop("per_type")
    return scores


def score(alignment: Alignment, iou: float = 0.5) -> dict[str, Any]:
    """``{"gmner", "mner", "eeg"[, "smner", "ees"]}``, each precision/recall/f1 as fractions
    with tp, n_pred and n_gold (typed metrics also ``per_type``)."""
    result = {
        "gmner": _score(alignment, "box_value", iou, typed=True),
        "mner": _score(alignment, None, iou, typed=True),
        "eeg": _score(alignment, "box_value", iou, typed=False),
    }
    if alignment.masks:
        result["smner"] = _score(alignment, "mask_value", iou, typed=True)
        result["ees"] = _score(alignment, "mask_value", iou, typed=False)
    return result


def sweep(alignment: Alignment, thresholds: Iterable[float] = SWEEP_THRESHOLDS) -> dict[str, Any]:
    """F1 of every metric at each IoU threshold: ``{"thresholds": [...], "gmner_f1": [...],
    ...}``; MNER does not depend on the threshold and is included as a reference line."""
    thresholds = list(thresholds)
    rows = [score(alignment, t) for t in thresholds]
    result: dict[str, Any] = {"thresholds": thresholds}
    for metric in rows[0] if rows else ():
        result[f"{metric}_f1"] = [row[metric]["f1"] for row in rows]
    return result


def align_mner(posts: Sequence[Post], predictions: Mapping[str, PredPost]) -> Alignment:
    """Align predictions with any CoNLL file's posts (no boxes) for span+type scoring."""
    return align([ground_post(post, None) for post in posts], predictions)


def score_mner(alignment: Alignment) -> dict[str, Any]:
    """MNER only: span and type, grounding ignored."""
    return _score(alignment, None, 0.5, typed=True)
