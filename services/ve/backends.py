"""VE backends: per entity, whether it is groundable in the image and a score in [0, 1]."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from riveg.serving.backend import Backend, BackendRegistry
from riveg.vision.hf import (
    WARM_ENTITY,
    WARM_IMAGE,
    model_folder,
    model_options,
    query_text,
    torch_threads,
)
from riveg.vision.person import PersonDetector
from services.ve.groundability import WEIGHTS, Embedder, GroundabilityModel, features

VE_BACKENDS: BackendRegistry[VeBackend] = BackendRegistry("ve")


class VeBackend(Backend):
    """Decides visibility for all entities of one image in one call."""

    @abstractmethod
    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        """(groundable, score) per entity, in order."""

    def entail_batch(
        self, items: list[tuple[np.ndarray, list[dict[str, Any]]]]
    ) -> list[list[tuple[bool, float]] | Exception]:
        """:meth:`entail` of several calls ``(image, entities)`` handed over together by the
        server's batcher (one image at a time unless a backend does better)."""
        return self.one_by_one(self.entail, items)

    def warm(self) -> None:
        """One call on a small grey image, so the first real call pays no first-call costs."""
        self.entail(WARM_IMAGE, [WARM_ENTITY])


@VE_BACKENDS.register("person")
class PersonVeBackend(VeBackend):
    """A PER entity is groundable when MediaPipe finds a person; other types are not (score 0).

    The score of a PER entity is the most confident person detection.
    """

    name = "mediapipe-person-ve"
    version = "0.10.21"

    def _load(self) -> None:
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


@VE_BACKENDS.register("groundability")
class GroundabilityVeBackend(VeBackend):
    """Text-side groundability (MiniLM embeddings + logistic regression trained on Twitter-GMNER,
    ``services.ve.groundability``) combined with the bundled person detector's evidence:

    * PER: groundable when the detector finds a person and the text model does not rule the
      entity out (P >= ``per_floor``); score = mean of the text probability and the detector's
      confidence. Without a person in the image, not groundable (score = P x 0.5).
    * other types: the detector says nothing about them; groundable when P >= ``threshold``.

    The detector runs only when a PER entity is in the batch. Weights: the committed
    ``services/ve/weights/groundability-1.npz``, or ``groundability.npz`` in a model-store folder.
    """

    name = "minilm-groundability"
    version = "1"
    PER_FLOOR = 0.25

    def _load(self) -> None:
        weights = WEIGHTS if self.model_dir is None else Path(self.model_dir) / "groundability.npz"
        self.text_model = GroundabilityModel.load(weights)
        self.embed = Embedder(threads=self.settings.models.torch_threads)
        self.detector = PersonDetector()

    def text_probabilities(self, entities: list[dict[str, Any]]) -> np.ndarray:
        """P(groundable) of each entity from its type and text alone."""
        return self.text_model.probability(features(self.embed, [entities]))

    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        if not entities:
            return []
        probability = self.text_probabilities(entities)
        people = self.detector.detect(image) if any(e["type"] == "PER" for e in entities) else []
        person = max((p.score for p in people), default=0.0)
        results = []
        for entity, p in zip(entities, probability.tolist(), strict=True):
            if entity["type"] == "PER":
                groundable = bool(people) and p >= self.PER_FLOOR
                score = (p + person) / 2 if people else p * 0.5
            else:
                groundable = p >= self.text_model.threshold
                score = p
            results.append((groundable, round(float(score), 6)))
        return results


@VE_BACKENDS.register("clip")
class ClipVeBackend(VeBackend):
    """CLIP-style image-text similarity (``transformers`` CLIPModel / SigLIP-compatible folder
    from the model store): the cosine similarity of the image and each referring expression,
    one forward pass for all entities of the image, calibrated to a probability by
    ``riveg-ve.json`` beside the weights: ``{"threshold": t, "temperature": s}``, score =
    sigmoid((cos - t) / s), groundable when cos >= t. ``calibrate_threshold`` fits t on labelled
    similarities."""

    name = "clip"
    version = "1"

    def _load(self) -> None:
        # optional backend: seconds to import, only when chosen
        from transformers import AutoModel, AutoProcessor

        torch_threads(self.settings)
        folder = model_folder(self)
        options = model_options(folder, "riveg-ve.json")
        self.threshold = float(options.get("threshold", 0.25))
        self.temperature = float(options.get("temperature", 0.02))
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.net = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.max_text = self.net.config.text_config.max_position_embeddings

    def similarities(self, image: np.ndarray, entities: list[dict[str, Any]]) -> np.ndarray:
        """Cosine similarity of the image with each entity's expression."""
        import torch  # lazy: model-store backend only; the default backend never loads torch

        inputs = self.processor(
            text=[query_text(e) for e in entities],
            images=image,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_text,
        )
        with torch.inference_mode():
            out = self.net(**inputs)
            image_vec = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            text_vec = torch.nn.functional.normalize(out.text_embeds, dim=-1)
            return (text_vec @ image_vec[0]).numpy()

    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        if not entities:
            return []
        cosine = self.similarities(image, entities)
        probability = 1.0 / (1.0 + np.exp(-(cosine - self.threshold) / self.temperature))
        return [
            (bool(c >= self.threshold), round(float(p), 6))
            for c, p in zip(cosine, probability, strict=True)
        ]


@VE_BACKENDS.register("itm")
class ItmVeBackend(VeBackend):
    """Image-text matching head (``transformers`` BlipForImageTextRetrieval, ALBEF-style ITM:
    a text encoder cross-attending to the image, then match / no match) from the model store.

    The image is encoded once per call; every expression of the batch is matched against it in
    one text-encoder pass. Score = P(match); groundable when it reaches ``threshold``
    (``riveg-ve.json``, default 0.5).
    """

    name = "itm"
    version = "1"

    def _load(self) -> None:
        # optional backend: seconds to import, only when chosen
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        torch_threads(self.settings)
        folder = model_folder(self)
        self.threshold = float(model_options(folder, "riveg-ve.json").get("threshold", 0.5))
        self.processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
        self.net = BlipForImageTextRetrieval.from_pretrained(folder, local_files_only=True).eval()
        self.max_text = self.net.config.text_config.max_position_embeddings

    def match_probabilities(self, image: np.ndarray, entities: list[dict[str, Any]]) -> np.ndarray:
        """P(the expression matches the image) per entity."""
        import torch  # lazy: model-store backend only; the default backend never loads torch

        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        text = self.processor.tokenizer(
            [query_text(e) for e in entities],
            padding=True,
            truncation=True,
            max_length=self.max_text,
            return_tensors="pt",
        )
        with torch.inference_mode():
            image_embeds = self.net.vision_model(pixel_values=pixels).last_hidden_state
            image_embeds = image_embeds.expand(len(entities), -1, -1)
            hidden = self.net.text_encoder(
                input_ids=text["input_ids"],
                attention_mask=text["attention_mask"],
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
            ).last_hidden_state
            logits = self.net.itm_head(hidden[:, 0, :])
        return logits.softmax(dim=-1)[:, 1].numpy()

    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        if not entities:
            return []
        probability = self.match_probabilities(image, entities)
        return [(bool(p >= self.threshold), round(float(p), 6)) for p in probability]


def calibrate_threshold(similarities: np.ndarray, labels: np.ndarray) -> float:
    """The similarity threshold with the best accuracy on labelled pairs (for riveg-ve.json)."""
    values = np.unique(np.asarray(similarities, np.float64))
    labels = np.asarray(labels, bool)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1]]])
    accuracy = [float(((similarities >= t) == labels).mean()) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])
