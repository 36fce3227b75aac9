"""The small model contract every stage backend follows (after KServe's ``Model``).

A backend is created from settings, ``load()``-ed once (weights from a path or package, never a
hub), reports ``ready`` and names its model ``name@version``; each stage adds its own predict
method. Backends are chosen by name from a per-stage registry.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from riveg.core.config import Settings

R = TypeVar("R")


class ServerStopping(RuntimeError):
    """The server stopped while this call was running: it was cut short (try another server)."""


class Backend(ABC):
    """Base of every stage backend: load once, then predict; thread-safe readiness. ``stop()``
    asks long predictions (a generation loop) to end early, as a server shutting down does."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    model_dir: Path | None = None  # the model's folder, when it came from one (store or path)
    batching: dict[str, Any] | None = None  # a version's own batch limits (its manifest's)
    # Calls per batch this backend gains from: 1 when its batch method runs one call at a time
    # (the server then hands it calls one by one, with no queue delay); None: the settings'.
    max_batch_size: ClassVar[int | None] = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = False
        self._load_lock = threading.Lock()
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Make predictions still running end early (they raise ServerStopping)."""
        self.stopping.set()

    @abstractmethod
    def _load(self) -> None:
        """Load weights and warm up; called once by load()."""

    def load(self) -> None:
        """Load the model (idempotent)."""
        with self._load_lock:
            if not self._ready:
                self._load()
                self._ready = True

    @property
    def ready(self) -> bool:
        """True once load() has finished."""
        return self._ready

    @property
    def model(self) -> str:
        """The model identity reported in every response: ``name@version``."""
        return f"{self.name}@{self.version}"

    @staticmethod
    def one_by_one(predict: Callable[..., R], items: list[tuple[Any, ...]]) -> list[R | Exception]:
        """``predict(*item)`` for each item of a batch, an exception standing for its own
        item's result: what a backend whose model takes one input at a time does with a
        batch (the others in the batch still answer)."""
        results: list[R | Exception] = []
        for item in items:
            try:
                results.append(predict(*item))
            except Exception as exc:
                results.append(exc)
        return results


B = TypeVar("B", bound=Backend)


class BackendRegistry(Generic[B]):
    """Named backend classes of one stage."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._factories: dict[str, Callable[[Settings], B]] = {}

    def register(self, key: str) -> Callable[[type[B]], type[B]]:
        """Class decorator: make the backend available under ``key`` (its configuration name)."""

        def decorate(cls: type[B]) -> type[B]:
            self._factories[key] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        """Registered backend names."""
        return sorted(self._factories)

    def create(self, name: str, settings: Settings) -> B:
        """A new, not yet loaded, backend; a clear error for an unknown name."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.stage} backend {name!r}; available: {', '.join(self.names())}"
            ) from None
        return factory(settings)
