"""SEG backends: a binary mask of the image's size for each box."""

from __future__ import annotations

import functools
from abc import abstractmethod
from typing import Any, ClassVar

import cv2
import numpy as np

from riveg.core.logging import get_logger
from riveg.serving.backend import Backend, BackendRegistry
from riveg.vision.hf import (
    WARM_IMAGE,
    batch_forward,
    check_image,
    model_folder,
    model_options,
    only,
    torch_threads,
)
from services.seg.selfie import SelfieSegmenter

SEG_BACKENDS: BackendRegistry[SegBackend] = BackendRegistry("seg")
log = get_logger("riveg.seg")


class SegBackend(Backend):
    """Segments all boxes of one image in one call."""

    max_batch_size: ClassVar[int | None] = 1  # the default batch method loops

    @abstractmethod
    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        """One HxW uint8 {0,1} mask per box, in order."""

    def segment_batch(
        self, items: list[tuple[np.ndarray, list[list[float]]]]
    ) -> list[list[np.ndarray] | Exception]:
        """:meth:`segment` of several calls ``(image, boxes)`` handed over together by the
        server's batcher (one image at a time unless a backend does better)."""
        return self.one_by_one(self.segment, items)

    def warm(self) -> None:
        """One call on a small grey image, so the first real call pays no first-call costs."""
        self.segment(WARM_IMAGE, [[8.0, 8.0, 40.0, 40.0]])


def grabcut_mask(
    image: np.ndarray,
    box: list[float],
    max_side: int | None = 160,
    margin: float | None = 0.5,
    iterations: int = 4,
) -> np.ndarray:
    """GrabCut's HxW {0,1} mask of an RGB image for a box, run on a crop: the box and
    ``margin`` times its size of context on each side (the background GrabCut learns its
    colours from; None: the whole image), scaled down to at most ``max_side`` pixels on its long
    side (None: full resolution), the mask scaled back up and kept inside the box."""
    height, width = image.shape[:2]
    bx1, by1 = max(0.0, box[0]), max(0.0, box[1])
    bx2, by2 = min(float(width), box[2]), min(float(height), box[3])
    if margin is None:
        cx1, cy1, cx2, cy2 = 0, 0, width, height
    else:
        mx, my = margin * (bx2 - bx1), margin * (by2 - by1)
        cx1, cy1 = max(0, int(bx1 - mx)), max(0, int(by1 - my))
        cx2, cy2 = min(width, int(np.ceil(bx2 + mx))), min(height, int(np.ceil(by2 + my)))
    crop = image[cy1:cy2, cx1:cx2]
    ch, cw = crop.shape[:2]
    scale = 1.0 if max_side is None else min(1.0, max_side / max(ch, cw))
    if scale < 1:
        crop = cv2.resize(crop, (max(1, round(cw * scale)), max(1, round(ch * scale))),
                          interpolation=cv2.INTER_AREA)  # fmt: skip
    bgr = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    # The rectangle keeps a pixel of background on every side (GrabCut needs some).
    x1 = int(np.clip(np.floor((bx1 - cx1) * scale), 1, max(1, w - 2)))
    y1 = int(np.clip(np.floor((by1 - cy1) * scale), 1, max(1, h - 2)))
    x2 = int(np.clip(np.ceil((bx2 - cx1) * scale), x1 + 1, max(x1 + 1, w - 1)))
    y2 = int(np.clip(np.ceil((by2 - cy1) * scale), y1 + 1, max(y1 + 1, h - 1)))
    small = np.zeros((h, w), np.uint8)
    if x2 - x1 < 3 or y2 - y1 < 3 or w < 5 or h < 5:
        small[y1:y2, x1:x2] = 1
    else:
        cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's per-thread RNG
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(bgr, small, (x1, y1, x2 - x1, y2 - y1), bgd, fgd, iterations,
                    cv2.GC_INIT_WITH_RECT)  # fmt: skip
        small = np.isin(small, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    if small.shape != (ch, cw):
        small = cv2.resize(small, (cw, ch), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros((height, width), np.uint8)
    mask[cy1:cy2, cx1:cx2] = small
    # A box-prompted mask stays inside its box (rescaling can spill a pixel or two).
    inside = np.zeros_like(mask)
    inside[int(np.floor(by1)) : int(np.ceil(by2)), int(np.floor(bx1)) : int(np.ceil(bx2))] = 1
    return mask * inside


@SEG_BACKENDS.register("grabcut")
class GrabCutSegBackend(SegBackend):
    """OpenCV GrabCut initialised with the box (no weights). Seeded, so results are repeatable.

    Each box is segmented on a crop: the box with ``MARGIN`` times its size of context on each
    side (the background GrabCut learns its colours from), scaled down to at most ``MAX_SIDE``
    pixels, the mask scaled back. GrabCut's answer moves with its context and scale, so no
    setting matches full-resolution GrabCut well; ``benchmarks/seg_grabcut.py`` measures each
    against it. On the people boxes of the default VG backend this crop agrees with it best
    (mean IoU 0.59, against 0.52 for the whole image at 320 px, the default before) and is about
    five times faster than that; on arbitrary boxes it agrees worse (0.26 against 0.45).
    """

    name = "opencv-grabcut"
    version = cv2.__version__
    MAX_SIDE = 160
    MARGIN: float | None = 0.5
    ITERATIONS = 4

    def _load(self) -> None:
        cv2.setNumThreads(1)

    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        return [
            grabcut_mask(image, box, self.MAX_SIDE, self.MARGIN, self.ITERATIONS) for box in boxes
        ]


@SEG_BACKENDS.register("selfie")
class SelfieSegBackend(GrabCutSegBackend):
    """People by MediaPipe's bundled selfie segmentation, everything else by GrabCut.

    The person mask is computed once per image; a box whose inside is at least
    ``MIN_PERSON_FRACTION`` person pixels gets the person mask clipped to the box (a person's
    box from the VG default is the body, so this is the body's silhouette), other boxes go to
    GrabCut as in the ``grabcut`` backend.
    """

    name = "mediapipe-selfie-grabcut"
    version = "0.10.21"
    MIN_PERSON_FRACTION = 0.15

    def _load(self) -> None:
        super()._load()
        self.selfie = SelfieSegmenter()

    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        if not boxes:
            return []
        person = (self.selfie.probability(image) > 0.5).astype(np.uint8)
        height, width = image.shape[:2]
        masks: list[np.ndarray | None] = []
        rest: list[int] = []
        for index, box in enumerate(boxes):
            x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
            x2, y2 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
            inside = person[y1:y2, x1:x2]
            if inside.size and inside.mean() >= self.MIN_PERSON_FRACTION:
                mask = np.zeros((height, width), np.uint8)
                mask[y1:y2, x1:x2] = inside
                masks.append(mask)
            else:
                masks.append(None)
                rest.append(index)
        if rest:
            for index, mask in zip(rest, super().segment(image, [boxes[i] for i in rest]),
                                   strict=True):  # fmt: skip
                masks[index] = mask
        return masks  # type: ignore[return-value]


@SEG_BACKENDS.register("sam")
class SamSegBackend(SegBackend):
    """SAM through ``transformers.SamModel`` (ViT-B/L/H, SlimSAM, ... from the model store), one
    box prompt per box: each image is encoded once and every box of it decoded against that
    embedding. A batch encodes all its images in one image-encoder pass (every image is resized
    and padded to the same input size), then decodes each image's boxes against its own
    embedding. Masks come back at the original image size (the processor's resize and padding
    undone by ``post_process_masks``)."""

    max_batch_size: ClassVar[int | None] = None  # one image-encoder pass per batch
    name = "sam"
    version = "1"

    def _load(self) -> None:
        from transformers import SamModel, SamProcessor  # optional backend: only when chosen

        torch_threads(self.settings)
        folder = model_folder(self)
        self.processor = SamProcessor.from_pretrained(folder, local_files_only=True)
        self.net = SamModel.from_pretrained(folder, local_files_only=True).eval()

    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        return only(self.segment_batch([(image, boxes)]))

    def segment_batch(
        self, items: list[tuple[np.ndarray, list[list[float]]]]
    ) -> list[list[np.ndarray] | Exception]:
        """All images of the batch in one ``get_image_embeddings`` call (see the class)."""
        return batch_forward(
            items, self._prepare, self._masks, functools.partial(self.one_by_one, self.segment)
        )

    def _prepare(self, image: np.ndarray, boxes: list[list[float]]) -> Any:
        """One image's pixel values, box prompts and sizes; None without boxes."""
        if not boxes:
            return None
        return self.processor(
            images=check_image(image),
            input_boxes=[[list(map(float, b)) for b in boxes]],
            return_tensors="pt",
            input_data_format="channels_last",
        )

    def _masks(self, prepared: list[Any]) -> list[list[np.ndarray] | Exception]:
        """Per prepared image, one HxW uint8 mask per box (an image whose decoding fails gets
        its exception)."""
        import torch  # lazy: model-store backend only; the default backend never loads torch

        with torch.inference_mode():
            embeddings = self.net.get_image_embeddings(
                torch.cat([inputs["pixel_values"] for inputs in prepared])
            )
        results: list[list[np.ndarray] | Exception] = []
        for index, inputs in enumerate(prepared):
            try:
                with torch.inference_mode():
                    outputs = self.net(
                        image_embeddings=embeddings[index : index + 1],
                        input_boxes=inputs["input_boxes"],
                        multimask_output=False,
                    )
                masks = self.processor.image_processor.post_process_masks(
                    outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
                )[0]  # [boxes, 1, H, W] booleans
                results.append([m[0].numpy().astype(np.uint8) for m in masks])
            except Exception as exc:
                results.append(exc)
        return results


@SEG_BACKENDS.register("segment-anything")
class SegmentAnythingSegBackend(SegBackend):
    """The original ``segment_anything`` package with a SAM checkpoint from the model store
    (``riveg-seg.json``: ``{"model_type": "vit_h", "checkpoint": "sam_vit_h_4b8939.pth"}``).

    Optional: that package imports torchvision, so it is imported only here, and a missing or
    broken install is reported by name. The ``sam`` backend serves the same models without it.
    """

    name = "segment-anything"
    version = "1"

    def _load(self) -> None:
        folder = model_folder(self)
        options = model_options(folder, "riveg-seg.json")
        try:
            from segment_anything import SamPredictor, sam_model_registry  # optional package
        except Exception as exc:  # ImportError, or torchvision failing inside it
            raise RuntimeError(
                "the segment-anything backend needs the segment_anything package and a working "
                f"torchvision ({type(exc).__name__}: {exc}); use RIVEG_SEG_BACKEND=sam "
                "(transformers SamModel) instead"
            ) from exc
        model_type = options.get("model_type", "vit_h")
        checkpoint = folder / options.get("checkpoint", "model.pth")
        if not checkpoint.is_file():
            raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        self.predictor = SamPredictor(sam_model_registry[model_type](checkpoint=str(checkpoint)))

    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        if not boxes:
            return []
        self.predictor.set_image(np.ascontiguousarray(image))  # one encoding per image
        masks = []
        for box in boxes:
            found, _, _ = self.predictor.predict(
                box=np.asarray(box, np.float32), multimask_output=False
            )
            masks.append(found[0].astype(np.uint8))
        return masks
