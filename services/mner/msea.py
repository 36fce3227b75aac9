"""MSEA: pick the hand-annotated in-context examples most similar to a post.

Similarity is the cosine of sentence embeddings of ``post text + image description``
(MiniLM-L6 mean-pooled and L2-normalised, as sentence-transformers' all-MiniLM-L6-v2 does).
The pool's embeddings are computed once and cached under ``<cache_dir>/msea``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from services.mner.data import Example, read_examples
from services.mner.model import default_encoder_dir

Embed = Callable[[Sequence[str]], torch.Tensor]


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a local Hugging Face encoder."""

    def __init__(self, model_dir: str | Path | None = None, max_length: int = 256) -> None:
        self.model_dir = Path(model_dir) if model_dir else default_encoder_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        self.max_length = max_length

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(len(texts), hidden) unit vectors."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not chunks:
            return torch.zeros((0, self.model.config.hidden_size))
        return torch.cat(chunks)


def query_text(text: str, caption: str | None = None) -> str:
    """What is embedded for a post: its text, then its image description."""
    return f"{text.strip()} {caption.strip()}".strip() if caption else text.strip()


class ExampleSelector:
    """The N most similar annotated examples of a pool, by cosine similarity."""

    def __init__(
        self, examples: Sequence[Example], embed: Embed, cache_file: Path | None = None
    ) -> None:
        if not examples:
            raise ValueError("the example pool is empty")
        self.examples = list(examples)
        self.embed = embed
        self.matrix = self._pool_embeddings(cache_file)

    def _pool_embeddings(self, cache_file: Path | None) -> torch.Tensor:
        texts = [query_text(e.text, e.caption) for e in self.examples]
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        if cache_file is not None and cache_file.is_file():
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            if cached.get("digest") == digest:
                return cached["matrix"]
        matrix = self.embed(texts)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"digest": digest, "matrix": matrix}, cache_file)
        return matrix

    def select(self, text: str, caption: str | None = None, n: int = 5) -> list[Example]:
        """The ``n`` pool examples most similar to the post, most similar first."""
        return [self.examples[i] for i, _ in self.scored(text, caption, n)]

    def scored(self, text: str, caption: str | None = None, n: int = 5) -> list[tuple[int, float]]:
        """(pool index, cosine similarity) of the ``n`` best examples."""
        query = self.embed([query_text(text, caption)])[0]
        sims = self.matrix @ query
        top = torch.topk(sims, k=min(n, len(self.examples)))
        return [(int(i), float(s)) for s, i in zip(top.values, top.indices, strict=True)]

    @classmethod
    def from_datasets(
        cls,
        datasets: Sequence[str] = ("twitter2017", "twitter2015"),
        embedder: Embed | None = None,
        cache_dir: Path | None = None,
    ) -> ExampleSelector:
        """A selector over the hand-annotated examples of the given benchmarks."""
        examples = [e for name in datasets for e in read_examples(name)]
        cache_file = None
        if cache_dir is not None:
            cache_file = Path(cache_dir) / "msea" / f"{'-'.join(datasets)}.pt"
        return cls(examples, embedder or SentenceEmbedder(), cache_file)


def format_examples(examples: Sequence[Example]) -> str:
    """In-context examples as prompt text (post, image description, annotated answer)."""
    blocks = []
    for example in examples:
        lines = [f"Text: {example.text}"]
        if example.caption:
            lines.append(f"Image: {example.caption}")
        lines.append(f"Answer: {example.annotation}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
