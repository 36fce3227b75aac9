"""Entity-level micro precision/recall/F1: the one matching code for MNER scoring everywhere."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any


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
