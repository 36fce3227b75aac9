"""VE backends: per entity, whether it is groundable in the image and a score in [0, 1]."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from riveg.common.backend import Backend, BackendRegistry

VE_BACKENDS: BackendRegistry[VeBackend] = BackendRegistry("ve")


class VeBackend(Backend):
    """Decides visibility for all entities of one image in one call."""

    @abstractmethod
    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        """(groundable, score) per entity, in order."""


@VE_BACKENDS.register("person")
class PersonVeBackend(VeBackend):
    """A PER entity is groundable when MediaPipe finds a person; other types are not (score 0).

    The score of a PER entity is the most confident person detection.
    """

    name = "mediapipe-person-ve"
    version = "0.10.21"

    def _load(self) -> None:
        from riveg.vision.person import PersonDetector

        self.detector = PersonDetector()

    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        if not any(e["type"] == "PER" for e in entities):
            return [(False, 0.0) for _ in entities]
        people = self.detector.detect(image)
        best = max((p.score for p in people), default=0.0)
        return [
            (e["type"] == "PER" and bool(people), best if e["type"] == "PER" else 0.0)
            for e in entities
        ]
