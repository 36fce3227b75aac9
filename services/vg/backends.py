"""VG backends: per entity, a box in original-image pixels or none."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from riveg.serving.backend import Backend, BackendRegistry
from riveg.vision.hf import (
    WARM_ENTITY,
    WARM_IMAGE,
    clip_box,
    cxcywh_to_pixels,
    model_folder,
    model_options,
    query_text,
    torch_threads,
)
from riveg.vision.person import PersonDetector

VG_BACKENDS: BackendRegistry[VgBackend] = BackendRegistry("vg")

Grounding = tuple[list[float] | None, float]


class VgBackend(Backend):
    """Grounds all entities of one image in one call."""

    @abstractmethod
    def ground(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[Grounding]:
        """(box [x1, y1, x2, y2] or None, score) per entity, in order."""

    def ground_batch(
        self, items: list[tuple[np.ndarray, list[dict[str, Any]]]]
    ) -> list[list[Grounding] | Exception]:
        """:meth:`ground` of several calls ``(image, entities)`` handed over together by the
        server's batcher (one image at a time unless a backend does better)."""
        return self.one_by_one(self.ground, items)

    def warm(self) -> None:
        """One call on a small grey image, so the first real call pays no first-call costs."""
        self.ground(WARM_IMAGE, [WARM_ENTITY])


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


class _DetectorVgBackend(VgBackend):
    """Open-vocabulary detector from the model store: the best box for each referring expression,
    all expressions of one image in one forward pass. A box is returned when its score reaches
    ``threshold`` (``riveg-vg.json`` beside the weights; default 0.1)."""

    version = "1"
    DEFAULT_THRESHOLD: ClassVar[float] = 0.1

    def _load(self) -> None:
        torch_threads(self.settings)
        folder = model_folder(self)
        self.threshold = float(
            model_options(folder, "riveg-vg.json").get("threshold", self.DEFAULT_THRESHOLD)
        )
        self._load_model(folder)

    def _load_model(self, folder: Path) -> None:
        raise NotImplementedError

    def ground(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[Grounding]:
        if not entities:
            return []
        import torch  # lazy: model-store backend only; the default backend never loads torch

        height, width = image.shape[:2]
        with torch.inference_mode():
            scores, boxes = self._best_boxes(image, [query_text(e) for e in entities])
        results: list[Grounding] = []
        for score, box in zip(scores, boxes, strict=True):
            found = score >= self.threshold
            results.append((clip_box(box, width, height) if found else None, round(score, 6)))
        return results

    def _best_boxes(
        self, image: np.ndarray, queries: list[str]
    ) -> tuple[list[float], list[list[float]]]:
        """Per query: the best detection's score and its box in original-image pixels."""
        raise NotImplementedError


@VG_BACKENDS.register("owl")
class OwlVgBackend(_DetectorVgBackend):
    """OWLv2 or OWL-ViT (``transformers``), chosen by the folder's config.

    OWLv2's processor pads the image to a square (bottom/right) before resizing, so its
    normalised boxes are fractions of the padded side ``max(h, w)``; OWL-ViT resizes without
    padding, so its boxes are fractions of width and height.
    """

    name = "owl"

    def _load_model(self, folder: Path) -> None:
        from transformers import (  # optional backend: seconds to import, only when chosen
            AutoConfig,
            Owlv2ForObjectDetection,
            Owlv2Processor,
            OwlViTForObjectDetection,
            OwlViTProcessor,
        )

        self.v2 = AutoConfig.from_pretrained(folder, local_files_only=True).model_type == "owlv2"
        model_class, processor_class = (
            (Owlv2ForObjectDetection, Owlv2Processor)
            if self.v2
            else (OwlViTForObjectDetection, OwlViTProcessor)
        )
        self.processor = processor_class.from_pretrained(folder, local_files_only=True)
        self.net = model_class.from_pretrained(folder, local_files_only=True).eval()
        self.max_text = self.net.config.text_config.max_position_embeddings

    def _best_boxes(
        self, image: np.ndarray, queries: list[str]
    ) -> tuple[list[float], list[list[float]]]:
        inputs = self.processor(
            text=[queries],
            images=image,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_text,
        )
        outputs = self.net(**inputs)
        logits = outputs.logits[0]  # [patches, queries]
        best = logits.argmax(dim=0)
        height, width = image.shape[:2]
        sx, sy = (max(height, width),) * 2 if self.v2 else (width, height)
        scores = logits.sigmoid().gather(0, best[None])[0].tolist()
        boxes = [cxcywh_to_pixels(outputs.pred_boxes[0, i].numpy(), sx, sy) for i in best]
        return scores, boxes


@VG_BACKENDS.register("grounding-dino")
class GroundingDinoVgBackend(_DetectorVgBackend):
    """Grounding DINO (``transformers``): the expressions joined as ``a . b . c .`` in one
    prompt; a query's score for an expression is its highest token probability over that
    expression's tokens. Boxes are fractions of the (unpadded) image."""

    name = "grounding-dino"
    DEFAULT_THRESHOLD = 0.25

    def _load_model(self, folder: Path) -> None:
        # optional backend: seconds to import, only when chosen
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        self.processor = GroundingDinoProcessor.from_pretrained(folder, local_files_only=True)
        self.net = GroundingDinoForObjectDetection.from_pretrained(
            folder, local_files_only=True
        ).eval()

    def _best_boxes(
        self, image: np.ndarray, queries: list[str]
    ) -> tuple[list[float], list[list[float]]]:
        import torch  # lazy: model-store backend only; the default backend never loads torch

        spans, parts, position = [], [], 0
        for query in queries:
            phrase = query.lower().replace(".", " ").strip() or "object"
            spans.append((position, position + len(phrase)))
            parts.append(phrase)
            position += len(phrase) + 3
        prompt = " . ".join(parts) + " ."
        encoded = self.processor.tokenizer(prompt, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        outputs = self.net(**inputs)
        probs = outputs.logits[0].sigmoid()  # [queries of the model, text tokens]
        height, width = image.shape[:2]
        scores, boxes = [], []
        limit = probs.shape[1]
        for start, end in spans:
            tokens = [
                t
                for t, (a, b) in enumerate(offsets)
                if t < limit and b > a and a >= start and b <= end
            ]
            if not tokens:  # truncated away: no evidence
                scores.append(0.0)
                boxes.append([0.0, 0.0, 0.0, 0.0])
                continue
            per_query = probs[:, torch.tensor(tokens)].max(dim=1).values
            best = int(per_query.argmax())
            scores.append(float(per_query[best]))
            boxes.append(cxcywh_to_pixels(outputs.pred_boxes[0, best].numpy(), width, height))
        return scores, boxes
