"""VG backends: per entity, a box in original-image pixels or none."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from riveg.common.backend import Backend, BackendRegistry

VG_BACKENDS: BackendRegistry[VgBackend] = BackendRegistry("vg")

Grounding = tuple[list[float] | None, float]


class VgBackend(Backend):
    """Grounds all entities of one image in one call."""

    @abstractmethod
    def ground(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[Grounding]:
        """(box [x1, y1, x2, y2] or None, score) per entity, in order."""


@VG_BACKENDS.register("person")
class PersonVgBackend(VgBackend):
    """Boxes of people found by MediaPipe for PER entities.

    People are ranked by area; the i-th PER entity gets the i-th largest person, and PER entities
    beyond the number of people get the largest (a post often names one person twice). Other
    types get no box.
    """

    name = "mediapipe-person-vg"
    version = "0.10.21"

    def _load(self) -> None:
        from riveg.vision.person import PersonDetector

        self.detector = PersonDetector()

    def ground(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[Grounding]:
        if not any(e["type"] == "PER" for e in entities):
            return [(None, 0.0) for _ in entities]
        people = self.detector.detect(image)
        results: list[Grounding] = []
        rank = 0
        for entity in entities:
            if entity["type"] != "PER" or not people:
                results.append((None, 0.0))
                continue
            person = people[rank] if rank < len(people) else people[0]
            rank += 1
            results.append((list(person.box), person.score))
        return results
