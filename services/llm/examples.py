"""In-context examples of the knowledge prompt: MSEA (``services.mner.msea``) over the
hand-annotated examples of ``manual_annotations/``, chosen by MiniLM similarity of
``text + image description``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from riveg.core.logging import get_logger
from riveg.data.conll import shared_datasets_dir
from services.mner.msea import ExampleSelector

log = get_logger("services.llm.examples")


@dataclass(frozen=True)
class PromptExample:
    """One annotated example as the prompt shows it."""

    text: str
    image: str
    answer: str


class ExamplePool:
    """The N most similar annotated examples of a post (the selector is built on first use)."""

    def __init__(self, datasets: tuple[str, ...], cache_dir: Path | None) -> None:
        self.datasets = datasets
        self.cache_dir = cache_dir
        self._selector = None
        self._lock = threading.Lock()

    def selector(self):  # type: ignore[no-untyped-def]
        """The MSEA selector (FileNotFoundError when the annotations are absent); one per
        process and pool, shared by every backend."""
        with self._lock:
            if self._selector is None:
                self._selector = _shared_selector(self.datasets, self.cache_dir)
            return self._selector

    def select(self, text: str, image_description: str, n: int) -> list[PromptExample]:
        """The ``n`` most similar examples, most similar first."""
        if n <= 0:
            return []
        chosen = self.selector().select(text, image_description or None, n)
        return [
            PromptExample(e.text, e.caption or "not described", e.annotation.strip())
            for e in chosen
        ]


_selectors: dict[tuple[tuple[str, ...], Path | None, Path], object] = {}
_selectors_lock = threading.Lock()


def _shared_selector(datasets: tuple[str, ...], cache_dir: Path | None):  # type: ignore[no-untyped-def]
    key = (datasets, cache_dir, shared_datasets_dir())
    with _selectors_lock:
        if key not in _selectors:
            try:
                selector = ExampleSelector.from_datasets(datasets, cache_dir=cache_dir)
            except (OSError, ValueError) as exc:
                raise FileNotFoundError(
                    f"cannot build the MSEA example pool from {', '.join(datasets)}: {exc} "
                    "(set RIVEG_DATASETS to the datasets folder)"
                ) from exc
            log.info("MSEA pool ready", examples=len(selector.examples))
            _selectors[key] = selector
        return _selectors[key]
