"""Batched prediction over posts and entity-level scoring (via :mod:`riveg.evaluation.spans`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from riveg.data.conll import Post, bio_spans
from riveg.evaluation.spans import score_spans
from services.mner.model import CrfTagger, WordEncoder

Span = tuple[int, int, str]


def tag_words(
    tagger: CrfTagger,
    encoder: WordEncoder,
    words: Sequence[list[str]],
    knowledge: Sequence[list[str] | None] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[tuple[list[str], list[float]]]:
    """BIO labels and per-word confidences for each word list (words cut by ``max_length``
    are labelled O). Batches are formed over length-sorted posts to limit padding."""
    labels = tagger.config.labels
    knowledge = knowledge if knowledge is not None else [None] * len(words)
    encoded = [encoder.encode(w, k or None) for w, k in zip(words, knowledge, strict=True)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    results: list[Any] = [None] * len(encoded)
    tagger.eval()
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="predict", disable=not progress, file=sys.stderr):
        chunk = order[start : start + batch_size]
        with torch.inference_mode():
            out = tagger.predict(encoder.collate([encoded[i] for i in chunk]))
        for index, (path, conf) in zip(chunk, out, strict=True):
            n_words = len(words[index])
            kept = len(encoded[index]["first"])
            tags = [labels[p] for p in path[:kept]] + ["O"] * (n_words - kept)
            results[index] = (tags, conf[:kept] + [0.0] * (n_words - kept))
    return results


def predict_spans(
    tagger: CrfTagger,
    encoder: WordEncoder,
    posts: Sequence[Post],
    use_knowledge: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[Span]]:
    """Predicted token spans (first, last + 1, type) of each post."""
    knowledge = [p.knowledge if use_knowledge else None for p in posts]
    tagged = tag_words(tagger, encoder, [p.tokens for p in posts], knowledge, batch_size, progress)
    return [bio_spans(tags) for tags, _ in tagged]


def score_posts(posts: Sequence[Post], predicted: Sequence[list[Span]]) -> dict[str, Any]:
    """Entity-level micro P/R/F1 overall and per type (exact span and type)."""
    return score_spans([p.token_spans() for p in posts], predicted)


def evaluate(
    tagger: CrfTagger,
    encoder: WordEncoder,
    posts: Sequence[Post],
    use_knowledge: bool = True,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Predict and score in one go."""
    predicted = predict_spans(tagger, encoder, posts, use_knowledge, batch_size, progress)
    return score_posts(posts, predicted)
