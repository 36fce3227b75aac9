"""Greedy batched generation that runs a shared prompt prefix once: a prefix tree of KV caches.

A prompt is a tuple of segments whose concatenation is its text. The expansion prompts of a batch
are ``(few-shot examples, post text, question about one entity)``: every prompt begins with the
same examples and the entities of one post share its text. The first segment is run once per
distinct text (and kept between calls, so the examples are run once per process), each further
level once per distinct path, and only the last segment per prompt, inside ``generate``.

Rows are left-padded level by level, so padding may sit in the middle of a row; it is masked, and
position ids count real tokens only, so each prompt sees the tokens, positions and attention of
its whole text run alone. A prompt whose segments tokenize differently from its whole text is run
unsplit.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, StoppingCriteria

Prompt = tuple[str, ...]
"""A prompt's segments; its text is their concatenation."""


@dataclass
class Prefilled:
    """The inputs ``generate`` continues from: every level's ids and mask, and the cache of all
    levels but the last."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: DynamicCache | None


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and their mask (1 for real tokens)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row) :] = 1
    return ids, mask


class PrefixTree:
    """Builds the shared-prefix caches of a batch of prompts for one causal LM."""

    def __init__(self, lm: Any, tokenizer: Any, keep: int = 4) -> None:
        self.lm = lm
        self.tokenizer = tokenizer
        self.keep = keep  # distinct first segments kept between calls
        self._first: OrderedDict[str, DynamicCache] = OrderedDict()
        self._first_lock = threading.Lock()
        self.window = getattr(lm.config, "sliding_window", None) or 0

    def segment_ids(self, prompts: Sequence[Prompt]) -> list[list[list[int]]]:
        """The token ids of each prompt's segments (BOS on the first; empty segments dropped); a
        prompt whose segments do not tokenize like its whole text becomes one segment."""
        out = []
        for prompt in prompts:
            texts = [prompt[0], *(text for text in prompt[1:] if text)]  # no empty levels
            parts = [
                self.tokenizer(text, add_special_tokens=index == 0)["input_ids"]
                for index, text in enumerate(texts)
            ]
            if len(parts) > 1:
                whole = self.tokenizer("".join(texts))["input_ids"]
                if whole != [t for part in parts for t in part]:
                    parts = [whole]
            out.append(parts)
        return out

    def prefill(self, prompts: Sequence[Prompt], max_new_tokens: int) -> Prefilled:
        """Run every level but the last (shared paths once) and return what ``generate`` needs."""
        parts = self.segment_ids(prompts)
        depth = max(len(p) for p in parts)
        rows = [self._uniform(p, depth) for p in parts] if depth > 1 else []
        # A row's width is every level's longest segment (padding sits in the middle of rows);
        # past the sliding window a sliding layer would drop cached tokens a row still needs.
        width = sum(max(len(r[level]) for r in rows) for level in range(depth)) if rows else 0
        if (
            depth == 1
            or min(sum(len(s) for s in p) for p in parts) < 2
            or (self.window and width + max_new_tokens > self.window)
        ):
            # Nothing shared, or too wide for the sliding window: one level, left padding.
            ids, mask = _left_pad([[t for s in p for t in s] for p in parts], self._pad_id)
            return Prefilled(ids, mask, None)
        previous: list[tuple[tuple[int, ...], ...]] = [()]
        ids = torch.zeros((1, 0), dtype=torch.long)
        mask = torch.zeros((1, 0), dtype=torch.long)
        cache: DynamicCache | None = None
        for level in range(depth):
            last = level == depth - 1
            paths = (
                [tuple(map(tuple, r)) for r in rows]
                if last
                else list(dict.fromkeys(tuple(map(tuple, r[: level + 1])) for r in rows))
            )
            parents = torch.tensor([previous.index(path[:level]) for path in paths])
            new_ids, new_mask = _left_pad([path[level] for path in paths], self._pad_id)
            ids = torch.cat([ids[parents], new_ids], dim=1)
            mask = torch.cat([mask[parents], new_mask], dim=1)
            if cache is not None:
                cache.batch_select_indices(parents)
            if last:
                break
            if level == 0 and len(paths) == 1:
                cache = self._first_cache(new_ids, new_mask)
            else:
                cache = cache if cache is not None else DynamicCache(config=self.lm.config)
                self._run(new_ids, mask, cache)
            previous = paths
        return Prefilled(ids, mask, cache)

    @staticmethod
    def _uniform(parts: list[list[int]], depth: int) -> list[list[int]]:
        """``depth`` segments: empty middle levels where a prompt has fewer (a one-segment
        prompt's last token becomes its last level, which must not be empty)."""
        if len(parts) == 1:
            parts = [parts[0][:-1], parts[0][-1:]]
        return [parts[0], *([[]] * (depth - len(parts))), *parts[1:]]

    @property
    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _run(self, new_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> None:
        """Append the keys and values of new tokens (positions count real tokens only)."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new_ids.shape[1] :]
        with torch.inference_mode():
            self.lm.model(
                input_ids=new_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )

    def _first_cache(self, ids: torch.Tensor, mask: torch.Tensor) -> DynamicCache:
        """A copy of the cache of one first segment, run once and kept (least recently used
        dropped beyond ``keep``)."""
        key = ",".join(map(str, ids[0].tolist()))
        with self._first_lock:
            cached = self._first.get(key)
            if cached is not None:
                self._first.move_to_end(key)
        if cached is None:
            cached = DynamicCache(config=self.lm.config)
            self._run(ids, mask, cached)
            with self._first_lock:
                self._first[key] = cached
                while len(self._first) > self.keep:
                    self._first.popitem(last=False)
        return copy.deepcopy(cached)


class StopWhen(StoppingCriteria):
    """Stop a row once ``done`` holds for the text it generated so far."""

    def __init__(self, tokenizer: Any, prompt_width: int, done: Callable[[str], bool]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.done = done

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_width :], skip_special_tokens=True
        )
        return torch.tensor([self.done(t) for t in texts], dtype=torch.bool)
