"""Entity-level micro precision/recall/F1: the one matching code for MNER scoring everywhere."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from riveg.data.conll import bio_spans


def prf(tp: int, n_pred: int, n_gold: int) -> dict[str, Any]:
    """Precision, recall and F1 as fractions (0 where undefined), with the counts."""
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "n_pred": n_pred,
        "n_gold": n_gold,
    }


def score_spans(
    gold: Sequence[Iterable[tuple[Hashable, ...]]],
    pred: Sequence[Iterable[tuple[Hashable, ...]]],
    type_index: int = -1,
) -> dict[str, Any]:
    """Exact-match micro scores of per-post entity tuples (e.g. (start, end, type)).

    Each gold tuple is matched at most once (multisets). ``per_type`` splits the counts by the
    tuple element at ``type_index``.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold posts but {len(pred)} predicted posts")
    tp_by, gold_by, pred_by = Counter(), Counter(), Counter()
    for gold_post, pred_post in zip(gold, pred, strict=True):
        gold_counts, pred_counts = Counter(gold_post), Counter(pred_post)
        for item, count in gold_counts.items():
            gold_by[item[type_index]] += count
            tp_by[item[type_index]] += min(count, pred_counts.get(item, 0))
        for item, count in pred_counts.items():
            pred_by[item[type_index]] += count
    overall = prf(sum(tp_by.values()), sum(pred_by.values()), sum(gold_by.values()))
    overall["per_type"] = {
        kind: prf(tp_by[kind], pred_by[kind], gold_by[kind])
        for kind in sorted(set(gold_by) | set(pred_by), key=str)
    }
    return overall


def score_tags(
    gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Entity-level scores of per-post BIO tag sequences (the model evaluation's entry point):
    spans from ``bio_spans`` as (first token, last token + 1, type), then ``score_spans``."""
    for index, (gold_post, pred_post) in enumerate(zip(gold_tags, pred_tags, strict=False)):
        if len(gold_post) != len(pred_post):
            raise ValueError(
                f"post {index}: {len(gold_post)} gold tags, {len(pred_post)} predicted"
            )
    return score_spans(
        [bio_spans(list(tags)) for tags in gold_tags], [bio_spans(list(tags)) for tags in pred_tags]
    )


def align_to_gold(
    gold: Sequence[tuple[int, int, str, str]],
    pred: Sequence[tuple[int | None, int | None, str, str]],
) -> list[int | None]:
    """The gold entity each prediction of one post is matched against (its index), or None.

    ``gold`` and ``pred`` hold (start, end, text, type). A prediction with a span is matched
    against the gold entity with exactly that span (several predictions may point at one gold
    entity; the multiset count in ``score_spans`` then credits only one). A prediction whose span
    is None is matched by its exact surface string: it takes a gold entity with the same text
    that no other prediction points at, first one of the same type, else one of any type, in
    text order; when none is left it matches nothing.
    """
    by_span = {(start, end): index for index, (start, end, _, _) in enumerate(gold)}
    matched: list[int | None] = [None] * len(pred)
    taken: set[int] = set()
    for index, (start, end, _, _) in enumerate(pred):
        if start is not None and end is not None:
            matched[index] = by_span.get((start, end))
            if matched[index] is not None:
                taken.add(matched[index])  # type: ignore[arg-type]
    by_string = [i for i, (start, end, _, _) in enumerate(pred) if start is None or end is None]
    for same_type in (True, False):
        for index in by_string:
            if matched[index] is not None:
                continue
            _, _, text, kind = pred[index]
            for gold_index, (_, _, gold_text, gold_kind) in enumerate(gold):
                if gold_index in taken or gold_text != text:
                    continue
                if same_type and gold_kind != kind:
                    continue
                matched[index] = gold_index
                taken.add(gold_index)
                break
    return matched
