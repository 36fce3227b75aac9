"""The base every stage servicer builds on: what all five servers do around their model.

A handler written with :func:`stage_rpc` receives the backend read once for the call (so a hot
swap in the middle cannot mix two models in one response), a response already naming that model,
and a call whose deadline is checked before the model runs; :meth:`StageServicer.image` fetches
and decodes the request's image from the object store, within the configured limits;
:meth:`StageServicer.check_text` and :meth:`StageServicer.check_count` hold every server's text
and entity limits.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import grpc
import numpy as np

from riveg.core.config import LimitsSettings, Settings
from riveg.core.images import fetch_image
from riveg.core.limits import check_count, check_text
from riveg.core.storage import ObjectStore
from riveg.serving.backend import Backend, BackendRegistry
from riveg.serving.batching import DynamicBatcher
from riveg.serving.manager import ModelManager
from riveg.serving.server import check_deadline
from riveg.v1 import common_pb2

Handler = Callable[[Any, Backend, Any, grpc.ServicerContext, Any], Any]
BatchRun = Callable[[Any, list[Any]], Sequence[Any]]
"""``run(backend, items)``: one result (or exception) per item."""


class StageServicer:
    """Base of the stage servicers: the models that answer and the store images come from.

    A subclass names its backend registry in ``backends``; :meth:`create_models` builds the
    stage's ModelManager from the settings (override it for a stage that composes backends).
    """

    backends: ClassVar[BackendRegistry[Any]]
    stage: ClassVar[str]

    def __init__(self, models: ModelManager, store: ObjectStore | None) -> None:
        self.models = models
        self.store = store
        self._batchers: dict[str, DynamicBatcher] = {}
        self._batchers_lock = threading.Lock()

    def batched(
        self, name: str, item: Any, context: grpc.ServicerContext, run: BatchRun | None = None
    ) -> tuple[Backend, Any]:
        """Hand ``item`` to this server's dynamic batcher ``name``: concurrent calls are run
        together by ``run(backend, items)`` (default: the backend's ``<name>_batch(items)``;
        one result or exception per item), the backend
        read once per batch so that a hot swap never splits one. Returns the backend that ran
        the item and its result; the call's deadline goes with it (DeadlineExpired when it
        passes in the queue). Batch limits: the model version's manifest ``batching``, else the
        backend's own ``max_batch_size`` (1 for one that runs calls one at a time: no queue
        delay then), else ``RIVEG_<STAGE>_MAX_BATCH_SIZE`` and ``_MAX_QUEUE_DELAY_MS``."""
        batcher = self._batcher(name, run or functools.partial(_batch_method, f"{name}_batch"))
        size, delay_ms = self.batch_limits()
        batcher.max_batch_size, batcher.max_queue_delay_s = size, delay_ms / 1000
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        return batcher.submit(item, deadline).result()

    def batch_limits(self) -> tuple[int, float]:
        """(max batch size, max queue delay in ms) for the model answering now."""
        section = self.models.settings.stage(self.stage)
        backend = self.models.current
        override = getattr(backend, "batching", None) or {}
        size = int(override.get("max_batch_size", getattr(backend, "max_batch_size", None)
                                or section.max_batch_size))  # fmt: skip
        delay = section.max_queue_delay_ms if size > 1 else 0.0  # nothing to wait for
        return size, float(override.get("max_queue_delay_ms", delay))

    def _batcher(self, name: str, run: BatchRun) -> DynamicBatcher:
        with self._batchers_lock:
            if name not in self._batchers:

                def run_batch(items: list[Any]) -> list[Any]:
                    backend = self.backend  # once per batch
                    results = run(backend, items)
                    return [r if isinstance(r, BaseException) else (backend, r) for r in results]

                size, delay_ms = self.batch_limits()
                instances = self.models.settings.stage(self.stage).model_instances
                self._batchers[name] = DynamicBatcher(f"{self.stage}.{name}", run_batch, size,
                                                      delay_ms, instances)  # fmt: skip
            return self._batchers[name]

    def close(self) -> None:
        """Stop the batchers (what they hold queued still runs)."""
        with self._batchers_lock:
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()

    @classmethod
    def create_models(cls, settings: Settings, store: ObjectStore | None) -> ModelManager:
        """The backend the settings name (``RIVEG_<STAGE>_MODEL``, else ``_BACKEND``)."""
        return ModelManager.from_settings(cls.stage, cls.backends, settings, store)

    @property
    def backend(self) -> Backend:
        """The backend answering now (a handler reads it once, through :func:`stage_rpc`)."""
        return self.models.current

    @property
    def limits(self) -> LimitsSettings:
        """This server's ``[limits]`` settings."""
        return self.models.settings.limits

    def check_text(self, text: str, *, required: bool = True) -> None:
        """InvalidInput for empty text (when ``required``), text over ``max_text_chars`` or text
        that is not valid Unicode."""
        check_text(text, self.limits.max_text_chars, required=required)

    def check_count(self, count: int, what: str = "entities") -> None:
        """InvalidInput when a call carries more than ``max_entities`` entities (or boxes)."""
        check_count(count, self.limits.max_entities, what)

    def image(self, ref: common_pb2.ImageRef, context: grpc.ServicerContext) -> np.ndarray:
        """The request's image (HxWx3 RGB) from the store, refused when over the byte or pixel
        limit; the deadline is checked after the download, before any model time is spent."""
        if self.store is None:
            raise RuntimeError(f"the {self.stage} server has no object store to read images from")
        limits = self.limits
        image = fetch_image(
            self.store,
            ref.key,
            max_bytes=limits.max_image_bytes,
            max_pixels=limits.max_image_pixels,
        )
        check_deadline(context)
        return image


def stage_rpc(response_class: type) -> Callable[[Handler], Callable[..., Any]]:
    """Make ``fn(self, backend, request, context, response)`` a unary handler: the deadline is
    checked, the backend is read once and named in ``response.model``; ``fn`` fills ``response``
    (returning a message instead replaces it)."""

    def decorate(fn: Handler) -> Callable[..., Any]:
        @functools.wraps(fn)
        def handler(self: StageServicer, request: Any, context: grpc.ServicerContext) -> Any:
            check_deadline(context)
            backend = self.backend  # once: a hot swap cannot mix two models in one answer
            response = response_class(model=backend.model)
            replaced = fn(self, backend, request, context, response)
            return response if replaced is None else replaced

        return handler

    return decorate


def _batch_method(method: str, backend: Any, items: list[Any]) -> Sequence[Any]:
    """The backend's own batch method ``method`` (e.g. ``entail_batch``) over the items."""
    return getattr(backend, method)(items)
