"""VE backends: per entity, whether it is groundable in the image and a score in [0, 1]."""

from __future__ import annotations

import functools
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from riveg.serving.backend import Backend, BackendRegistry
from riveg.vision.hf import (
    WARM_ENTITY,
    WARM_IMAGE,
    batch_forward,
    image_inputs,
    model_folder,
    model_options,
    only,
    query_text,
    torch_threads,
)
from riveg.vision.person import PersonDetector
from services.ve.groundability import WEIGHTS, Embedder, GroundabilityModel, features

VE_BACKENDS: BackendRegistry[VeBackend] = BackendRegistry("ve")


class VeBackend(Backend):
    """Decides visibility for all entities of one image in one call."""

    max_batch_size: ClassVar[int | None] = 1  # the default batch method loops

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


class ImageTextVeBackend(VeBackend):
    """A transformers image-text backend: a batch's images and expressions in one forward
    (:func:`batch_forward`: an image that cannot be prepared fails its own call)."""

    processor: Any
    max_batch_size: ClassVar[int | None] = None  # one forward per batch

    def _prepare(self, image: np.ndarray, entities: list[dict[str, Any]]) -> Any:
        """One item's pixel values and expressions; None without entities."""
        if not entities:
            return None
        pixels = image_inputs(self.processor.image_processor, image)["pixel_values"]
        return pixels, [query_text(e) for e in entities]

    @abstractmethod
    def _judge(self, prepared: list[Any]) -> list[list[tuple[bool, float]]]:
        """(groundable, score) per expression of each prepared item, in one forward."""

    def entail(self, image: np.ndarray, entities: list[dict[str, Any]]) -> list[tuple[bool, float]]:
        return only(self.entail_batch([(image, entities)]))

    def entail_batch(
        self, items: list[tuple[np.ndarray, list[dict[str, Any]]]]
    ) -> list[list[tuple[bool, float]] | Exception]:
        return batch_forward(
            items, self._prepare, self._judge, functools.partial(self.one_by_one, self.entail)
        )


@VE_BACKENDS.register("clip")
class ClipVeBackend(ImageTextVeBackend):
    """CLIP-style image-text similarity (``transformers`` CLIPModel / SigLIP-compatible folder
    from the model store): the cosine similarity of the image and each referring expression,
    calibrated to a probability by ``riveg-ve.json`` beside the weights:
    ``{"threshold": t, "temperature": s}``, score = sigmoid((cos - t) / s), groundable when
    cos >= t. ``calibrate_threshold`` fits t on labelled similarities.

    One forward pass for a whole batch: every image of it through the vision tower and every
    expression through the text tower, each image compared with its own expressions. SigLIP's
    text tower pools the last position, so its expressions are padded to ``max_length`` (as it
    was trained), which keeps a score independent of the other texts in the forward; CLIP's
    pools the end-of-text token under a causal mask, so ``padding=True`` is enough."""

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
        siglip = self.net.config.model_type.startswith("siglip")
        self.text_padding: bool | str = "max_length" if siglip else True

    def _cosines(self, prepared: list[Any]) -> list[np.ndarray]:
        """Per prepared item, the cosine similarity of its image with each of its expressions,
        all items in one forward pass."""
        import torch  # lazy: model-store backend only; the default backend never loads torch

        text = self.processor.tokenizer(
            [t for _, texts in prepared for t in texts],
            padding=self.text_padding,
            truncation=True,
            max_length=self.max_text,
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = self.net(pixel_values=torch.cat([p for p, _ in prepared]), **text)
            image_vec = torch.nn.functional.normalize(out.image_embeds, dim=-1)
            text_vec = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        cosines, start = [], 0
        for index, (_, texts) in enumerate(prepared):
            block = text_vec[start : start + len(texts)]
            cosines.append((block @ image_vec[index]).numpy())
            start += len(texts)
        return cosines

    def similarities(self, image: np.ndarray, entities: list[dict[str, Any]]) -> np.ndarray:
        """Cosine similarity of the image with each entity's expression."""
        prepared = self._prepare(image, entities)
        return np.zeros(0, np.float32) if prepared is None else self._cosines([prepared])[0]

    def _calibrated(self, cosine: np.ndarray) -> list[tuple[bool, float]]:
        probability = 1.0 / (1.0 + np.exp(-(cosine - self.threshold) / self.temperature))
        return [
            (bool(c >= self.threshold), round(float(p), 6))
            for c, p in zip(cosine, probability, strict=True)
        ]

    def _judge(self, prepared: list[Any]) -> list[list[tuple[bool, float]]]:
        return [self._calibrated(c) for c in self._cosines(prepared)]


@VE_BACKENDS.register("itm")
class ItmVeBackend(ImageTextVeBackend):
    """Image-text matching head (``transformers`` BlipForImageTextRetrieval, ALBEF-style ITM:
    a text encoder cross-attending to the image, then match / no match) from the model store.

    A batch's images are encoded in one vision pass; every (image, expression) pair of the batch
    is then matched in one text-encoder pass, each expression cross-attending to its own image.
    Score = P(match); groundable when it reaches ``threshold`` (``riveg-ve.json``, default 0.5).
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

    def _probabilities(self, prepared: list[Any]) -> list[np.ndarray]:
        """Per prepared item, P(match) of each of its expressions with its image."""
        import torch  # lazy: model-store backend only; the default backend never loads torch

        counts = [len(texts) for _, texts in prepared]
        text = self.processor.tokenizer(
            [t for _, texts in prepared for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_text,
            return_tensors="pt",
        )
        owner = torch.repeat_interleave(torch.arange(len(prepared)), torch.tensor(counts))
        with torch.inference_mode():
            pixels = torch.cat([p for p, _ in prepared])
            image_embeds = self.net.vision_model(pixel_values=pixels).last_hidden_state[owner]
            hidden = self.net.text_encoder(
                input_ids=text["input_ids"],
                attention_mask=text["attention_mask"],
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long),
            ).last_hidden_state
            logits = self.net.itm_head(hidden[:, 0, :])
        return [p.numpy() for p in torch.split(logits.softmax(dim=-1)[:, 1], counts)]

    def match_probabilities(self, image: np.ndarray, entities: list[dict[str, Any]]) -> np.ndarray:
        """P(the expression matches the image) per entity."""
        prepared = self._prepare(image, entities)
        return np.zeros(0, np.float32) if prepared is None else self._probabilities([prepared])[0]

    def _judge(self, prepared: list[Any]) -> list[list[tuple[bool, float]]]:
        return [
            [(bool(p >= self.threshold), round(float(p), 6)) for p in probability]
            for probability in self._probabilities(prepared)
        ]


def calibrate_threshold(similarities: np.ndarray, labels: np.ndarray) -> float:
    """The similarity threshold with the best accuracy on labelled pairs (for riveg-ve.json)."""
    values = np.unique(np.asarray(similarities, np.float64))
    labels = np.asarray(labels, bool)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1]]])
    accuracy = [float(((similarities >= t) == labels).mean()) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])
