"""One stage's models in a running server: load a version, warm it, swap it in atomically.

Calls read ``ModelManager.current`` once and keep that backend to the end, so a swap never
breaks a call in flight: calls that started before the swap finish on the old model, calls that
start after it use the new one. The replaced model stays loaded as ``previous`` for an instant
rollback (at the cost of its memory).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riveg.core.config import Settings
from riveg.core.logging import get_logger
from riveg.serving import metrics
from riveg.serving.backend import Backend, BackendRegistry
from riveg.serving.modelstore import (
    MANIFEST,
    ModelRef,
    ModelStore,
    open_model_store,
    parse_model_ref,
)

log = get_logger("riveg.serving.modelstore")


@dataclass
class SwapResult:
    """What a load or rollback did."""

    model: str
    previous: str
    load_s: float
    swap_ms: float


def resolve_backend(
    stage: str, ref: ModelRef, registry: Any, settings: Settings, models: ModelStore | None
) -> tuple[Backend, str]:
    """A new, not yet loaded backend for ``ref`` and its backend key.

    A version in the model store names its backend in the manifest and gets the fetched folder
    as ``model_dir``; otherwise a name that is a registered backend is that backend with its
    bundled weights (``person@1``), reported as ``ref``.
    """
    manifest = models.manifest(stage, ref) if models is not None else None
    if manifest is not None:
        key = str(manifest.get("backend", ""))
        backend = registry.create(key, settings)
        backend.model_dir = models.fetch(stage, ref)  # type: ignore[union-attr]
        backend.batching = dict(manifest.get("batching") or {})
    elif ref.name in registry.names():
        key = ref.name
        backend = registry.create(key, settings)
        backend.model_dir = None
    else:
        where = f"{models.store!r}" if models is not None else "no model store"
        raise ValueError(
            f"{stage} model {ref} is neither in the model store ({where}, "
            f"{stage}/{ref.name}/{ref.version}/riveg-model.json) nor a builtin backend "
            f"({', '.join(registry.names())})"
        )
    backend.name = ref.name  # type: ignore[misc]
    backend.version = ref.version  # type: ignore[misc]
    return backend, key


def is_model_folder(value: str) -> bool:
    """Whether a configured model names a folder (a path) rather than ``name@version``."""
    return "/" in value or value.startswith(".") or Path(value).is_dir()


def folder_backend(
    stage: str, folder: Path, registry: BackendRegistry[Any], settings: Settings
) -> tuple[Backend, str]:
    """A new backend serving the model folder: its manifest's backend (``riveg-model.json``,
    reported as the manifest's ``model``) when it has one, else the stage's configured backend,
    which then names the model itself once loaded (e.g. MNER's ``tagger.json``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{stage} model folder not found: {folder}")
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    key = str(manifest.get("backend") or settings.stage(stage).backend)
    backend = registry.create(key, settings)
    backend.model_dir = folder
    if manifest.get("model"):
        ref = parse_model_ref(str(manifest["model"]))
        backend.name, backend.version = ref.name, ref.version  # type: ignore[misc]
    return backend, key


def warm(backend: Backend) -> None:
    """Load the backend and run its warm-up call (first-call costs out of the serving path)."""
    backend.load()
    warm_up = getattr(backend, "warm", None)
    if callable(warm_up):
        warm_up()


class ModelManager:
    """The answering backend of one stage, the previous one, and how to change them."""

    def __init__(
        self,
        stage: str,
        registry: Any,
        settings: Settings,
        backend: Backend,
        backend_name: str,
        models: ModelStore | None = None,
    ) -> None:
        self.stage = stage
        self.registry = registry
        self.settings = settings
        self.models = models
        self.current = backend
        self.backend_name = backend_name
        self.previous: Backend | None = None
        self.previous_backend_name = ""
        self._load_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, stage: str, registry: Any, settings: Settings, store: Any = None
    ) -> ModelManager:
        """The model ``RIVEG_<STAGE>_MODEL`` names (a folder, or ``name@version`` from the model
        store or a builtin backend), else the backend ``RIVEG_<STAGE>_BACKEND`` names."""
        configured = settings.stage(stage).model
        models = _model_store(settings, store)
        if configured and is_model_folder(configured):
            backend, key = folder_backend(stage, Path(configured), registry, settings)
        elif configured:
            backend, key = resolve_backend(
                stage, parse_model_ref(configured), registry, settings, models
            )
        else:
            key = settings.stage(stage).backend
            backend = registry.create(key, settings)
        return cls(stage, registry, settings, backend, key, models)

    def load(self, model: str) -> SwapResult:
        """Load (or reuse the previous) ``name@version``, warm it, then swap it in."""
        ref = parse_model_ref(model)
        with self._load_lock:
            started = time.perf_counter()
            if self.previous is not None and self.previous.model == str(ref):
                backend, key = self.previous, self.previous_backend_name
            elif self.current.model == str(ref) and self.current.ready:
                return SwapResult(self.current.model, self._previous_model(), 0.0, 0.0)
            else:
                backend, key = resolve_backend(
                    self.stage, ref, self.registry, self.settings, self.models
                )
            try:
                warm(backend)
            except Exception:
                metrics.MODEL_LOADS.labels(self.stage, "error").inc()
                raise
            load_s = time.perf_counter() - started
            metrics.MODEL_LOADS.labels(self.stage, "swap").inc()
            metrics.MODEL_LOAD_SECONDS.labels(self.stage).observe(load_s)
            return self._swap(backend, key, load_s)

    def rollback(self) -> SwapResult:
        """Swap the previous model back in; ValueError when there is none."""
        with self._load_lock:
            if self.previous is None:
                raise ValueError(f"{self.stage}: no previous model to roll back to")
            return self._swap(self.previous, self.previous_backend_name, 0.0)

    def _swap(self, backend: Backend, key: str, load_s: float) -> SwapResult:
        started = time.perf_counter()
        old, old_key = self.current, self.backend_name
        # One attribute store: calls read `current` once, so each sees old or new, never a mix.
        self.current, self.backend_name = backend, key
        self.previous, self.previous_backend_name = old, old_key
        metrics.show_model(self.stage, backend, key, old, old_key)
        swap_ms = (time.perf_counter() - started) * 1000
        log.info(
            "model swapped",
            stage=self.stage,
            model=backend.model,
            previous=old.model,
            load_s=round(load_s, 2),
        )
        return SwapResult(backend.model, old.model, load_s, swap_ms)

    def _previous_model(self) -> str:
        return self.previous.model if self.previous is not None else ""

    def available(self) -> list[dict[str, Any]]:
        """Versions in the store plus the loaded ones, with current/previous/builtin flags."""
        rows: dict[str, dict[str, Any]] = {}
        if self.models is not None:
            try:
                for stored in self.models.list(self.stage):
                    rows[str(stored.ref)] = {"backend": stored.backend, "builtin": False}
            except Exception as exc:  # an unreachable store must not hide the loaded models
                log.warning("cannot list the model store", error=str(exc))
        for backend, key in (
            (self.current, self.backend_name),
            (self.previous, self.previous_backend_name),
        ):
            if backend is not None and backend.model not in rows:
                rows[backend.model] = {
                    "backend": key,
                    "builtin": getattr(backend, "model_dir", None) is None,
                }
        for model, row in rows.items():
            row["model"] = model
            row["current"] = model == self.current.model
            row["previous"] = model == self._previous_model()
        return sorted(rows.values(), key=lambda r: r["model"])


def _model_store(settings: Settings, store: Any) -> ModelStore | None:
    try:
        return open_model_store(settings, store)
    except Exception as exc:  # no store reachable: builtins still work
        log.warning("model store unavailable", error=str(exc))
        return None
