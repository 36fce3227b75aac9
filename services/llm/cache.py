"""Generations cached in the object store, keyed by backend, model and a hash of the request.

Key: ``llm-cache/<backend>/<model>/<sha256[:2]>/<sha256>.json`` where the hash covers the prompt
and every decoding parameter (max tokens, stop sequences). A repeated post is answered from the
store without calling the model.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from riveg.core.logging import get_logger
from riveg.core.storage import ObjectNotFound, ObjectStore

log = get_logger("services.llm.cache")
PREFIX = "llm-cache"


def _segment(value: str) -> str:
    return re.sub(r"[^\w.@-]+", "_", value).strip("_") or "_"


def request_hash(prompt: Any, **params: Any) -> str:
    """sha256 of the prompt (text or message list) and the decoding parameters."""
    payload = json.dumps({"prompt": prompt, **params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class GenerationCache:
    """get/put of generated text by (backend, model, request hash)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0

    def key(self, backend: str, model: str, digest: str) -> str:
        """The object key of one cached generation."""
        return f"{PREFIX}/{_segment(backend)}/{_segment(model)}/{digest[:2]}/{digest}.json"

    def get(self, backend: str, model: str, digest: str) -> str | None:
        """The cached text, or None."""
        try:
            value = self.store.get_json(self.key(backend, model, digest))
        except ObjectNotFound:
            self.misses += 1
            return None
        except (ValueError, OSError) as exc:  # a torn or unreadable entry is a miss
            log.warning("unreadable cache entry", error=str(exc))
            self.misses += 1
            return None
        self.hits += 1
        return str(value["output"])

    def put(self, backend: str, model: str, digest: str, output: str) -> None:
        """Remember a generation."""
        self.store.put_json(self.key(backend, model, digest), {"output": output, "sha256": digest})
