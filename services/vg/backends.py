"""VG backends: per entity, a box in original-image pixels or none."""

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
    check_image,
    clip_box,
    cxcywh_to_pixels,
    image_inputs,
    model_folder,
    model_options,
    only,
    query_text,
    torch_threads,
)
from riveg.vision.person import PersonDetector

VG_BACKENDS: BackendRegistry[VgBackend] = BackendRegistry("vg")

Grounding = tuple[list[float] | None, float]


class VgBackend(Backend):
    """Grounds all entities of one image in one call."""

    max_batch_size: ClassVar[int | None] = 1  # the default batch method loops

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
    """Open-vocabulary detector from the model store: the best box for each referring expression.
    A batch runs in one forward pass: all its images, each with its own expressions, and each
    item's boxes are mapped back to its own image. A box is returned when its score reaches
    ``threshold`` (``riveg-vg.json`` beside the weights; default 0.1)."""

    version = "1"
    DEFAULT_THRESHOLD: ClassVar[float] = 0.1
    max_batch_size: ClassVar[int | None] = None  # one forward per batch

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
        return only(self.ground_batch([(image, entities)]))

    def ground_batch(
        self, items: list[tuple[np.ndarray, list[dict[str, Any]]]]
    ) -> list[list[Grounding] | Exception]:
        """All images of the batch in one forward pass (see the class)."""
        return batch_forward(
            items,
            self._prepare_item,
            self._ground_prepared,
            functools.partial(self.one_by_one, self.ground),
        )

    def _prepare_item(
        self, image: np.ndarray, entities: list[dict[str, Any]]
    ) -> tuple[tuple[int, int], Any] | None:
        """One item's image size (height, width) and model inputs; None without entities."""
        if not entities:
            return None
        size = check_image(image).shape[:2]
        return (size[0], size[1]), self._prepare(image, [query_text(e) for e in entities])

    def _ground_prepared(
        self, prepared: list[tuple[tuple[int, int], Any]]
    ) -> list[list[Grounding]]:
        import torch  # lazy: model-store backend only; the default backend never loads torch

        sizes = [size for size, _ in prepared]
        with torch.inference_mode():
            found = self._best_boxes([inputs for _, inputs in prepared], sizes)
        results: list[list[Grounding]] = []
        for (height, width), (scores, boxes) in zip(sizes, found, strict=True):
            results.append(
                [
                    (
                        clip_box(box, width, height) if score >= self.threshold else None,
                        round(score, 6),
                    )
                    for score, box in zip(scores, boxes, strict=True)
                ]
            )
        return results

    def _prepare(self, image: np.ndarray, queries: list[str]) -> Any:
        """One image's model inputs with its queries (preprocessed alone: a bad image fails
        only its own item)."""
        raise NotImplementedError

    def _best_boxes(
        self, prepared: list[Any], sizes: list[tuple[int, int]]
    ) -> list[tuple[list[float], list[list[float]]]]:
        """One forward pass over prepared items; per item and query, the best detection's score
        and its box in the pixels of that item's original image (``sizes``: height, width)."""
        raise NotImplementedError


@VG_BACKENDS.register("owl")
class OwlVgBackend(_DetectorVgBackend):
    """OWLv2 or OWL-ViT (``transformers``), chosen by the folder's config.

    OWLv2's processor pads the image to a square (bottom/right) before resizing, so its
    normalised boxes are fractions of the padded side ``max(h, w)``; OWL-ViT resizes without
    padding, so its boxes are fractions of width and height. Every image becomes the same
    model input size, so a batch stacks them as they are; an item with fewer queries is padded
    with copies of its first query, whose scores are dropped (OWL scores each query alone).
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

    def _prepare(self, image: np.ndarray, queries: list[str]) -> Any:
        pixels = image_inputs(self.processor.image_processor, image)["pixel_values"]
        text = self.processor.tokenizer(
            queries,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_text,
        )
        return pixels, text

    def _best_boxes(
        self, prepared: list[Any], sizes: list[tuple[int, int]]
    ) -> list[tuple[list[float], list[list[float]]]]:
        import torch  # lazy: model-store backend only; the default backend never loads torch

        most = max(len(text["input_ids"]) for _, text in prepared)
        ids, masks = [], []
        for _, text in prepared:
            extra = most - len(text["input_ids"])
            ids.append(torch.cat([text["input_ids"], text["input_ids"][:1].expand(extra, -1)]))
            masks.append(
                torch.cat([text["attention_mask"], text["attention_mask"][:1].expand(extra, -1)])
            )
        outputs = self.net(
            input_ids=torch.cat(ids),
            attention_mask=torch.cat(masks),
            pixel_values=torch.cat([pixels for pixels, _ in prepared]),
        )
        found = []
        for index, ((_, text), (height, width)) in enumerate(zip(prepared, sizes, strict=True)):
            logits = outputs.logits[index, :, : len(text["input_ids"])]  # [patches, queries]
            best = logits.argmax(dim=0)
            sx, sy = (max(height, width),) * 2 if self.v2 else (width, height)
            scores = logits.sigmoid().gather(0, best[None])[0].tolist()
            boxes = [cxcywh_to_pixels(outputs.pred_boxes[index, i].numpy(), sx, sy) for i in best]
            found.append((scores, boxes))
        return found


@VG_BACKENDS.register("grounding-dino")
class GroundingDinoVgBackend(_DetectorVgBackend):
    """Grounding DINO (``transformers``): the expressions joined as ``a . b . c .`` in one
    prompt; a query's score for an expression is its highest token probability over that
    expression's tokens. Boxes are fractions of the (unpadded) image.

    A batch pads its images together (bottom/right zeros, ``pixel_mask`` marking the padding,
    as the processor does for a list of images) and its prompts together (``attention_mask``).
    The transformer ignores the padding, but the Swin backbone's windows near an image's
    bottom/right edge see it, so an image batched with larger ones can score a little
    differently from the same image alone; images of one resized size are not padded at all.
    """

    name = "grounding-dino"
    DEFAULT_THRESHOLD = 0.25

    def _load_model(self, folder: Path) -> None:
        # optional backend: seconds to import, only when chosen
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        self.processor = GroundingDinoProcessor.from_pretrained(folder, local_files_only=True)
        self.net = GroundingDinoForObjectDetection.from_pretrained(
            folder, local_files_only=True
        ).eval()

    def _prepare(self, image: np.ndarray, queries: list[str]) -> Any:
        spans, parts, position = [], [], 0
        for query in queries:
            phrase = query.lower().replace(".", " ").strip() or "object"
            spans.append((position, position + len(phrase)))
            parts.append(phrase)
            position += len(phrase) + 3
        prompt = " . ".join(parts) + " ."
        encoded = self.processor.tokenizer(prompt, return_offsets_mapping=True)
        images = image_inputs(self.processor.image_processor, image)
        return images["pixel_values"][0], encoded["input_ids"], encoded["offset_mapping"], spans

    def _best_boxes(
        self, prepared: list[Any], sizes: list[tuple[int, int]]
    ) -> list[tuple[list[float], list[list[float]]]]:
        import torch  # lazy: model-store backend only; the default backend never loads torch

        height = max(pixels.shape[1] for pixels, *_ in prepared)
        width = max(pixels.shape[2] for pixels, *_ in prepared)
        length = max(len(ids) for _, ids, *_ in prepared)
        count = len(prepared)
        pixel_values = torch.zeros(count, 3, height, width)
        pixel_mask = torch.zeros(count, height, width, dtype=torch.long)
        input_ids = torch.full((count, length), self.processor.tokenizer.pad_token_id)
        attention_mask = torch.zeros(count, length, dtype=torch.long)
        for index, (pixels, ids, *_) in enumerate(prepared):
            pixel_values[index, :, : pixels.shape[1], : pixels.shape[2]] = pixels
            pixel_mask[index, : pixels.shape[1], : pixels.shape[2]] = 1
            input_ids[index, : len(ids)] = torch.tensor(ids)
            attention_mask[index, : len(ids)] = 1
        outputs = self.net(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        )
        found = []
        for index, ((_, _, offsets, spans), (h, w)) in enumerate(zip(prepared, sizes, strict=True)):
            probs = outputs.logits[index].sigmoid()  # [queries of the model, text tokens]
            limit = probs.shape[1]
            scores, boxes = [], []
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
                boxes.append(cxcywh_to_pixels(outputs.pred_boxes[index, best].numpy(), w, h))
            found.append((scores, boxes))
        return found
