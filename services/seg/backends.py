"""SEG backends: a binary mask of the image's size for each box."""

from __future__ import annotations

from abc import abstractmethod

import cv2
import numpy as np

from riveg.common.backend import Backend, BackendRegistry
from riveg.common.logging import get_logger

SEG_BACKENDS: BackendRegistry[SegBackend] = BackendRegistry("seg")
log = get_logger("riveg.seg")


class SegBackend(Backend):
    """Segments all boxes of one image in one call."""

    @abstractmethod
    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        """One HxW uint8 {0,1} mask per box, in order."""


@SEG_BACKENDS.register("grabcut")
class GrabCutSegBackend(SegBackend):
    """OpenCV GrabCut initialised with the box (no weights). Seeded, so results are repeatable.

    Images are processed at most ``MAX_SIDE`` pixels on their long side and the mask is scaled
    back to the original size.
    """

    name = "opencv-grabcut"
    version = cv2.__version__
    MAX_SIDE = 320
    ITERATIONS = 4

    def _load(self) -> None:
        cv2.setNumThreads(1)

    def segment(self, image: np.ndarray, boxes: list[list[float]]) -> list[np.ndarray]:
        height, width = image.shape[:2]
        scale = min(1.0, self.MAX_SIDE / max(height, width))
        small = (
            cv2.resize(
                image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
            )
            if scale < 1
            else image
        )
        bgr = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR)
        return [self._one(bgr, box, scale, (height, width)) for box in boxes]

    def _one(
        self, bgr: np.ndarray, box: list[float], scale: float, size: tuple[int, int]
    ) -> np.ndarray:
        h, w = bgr.shape[:2]
        x1 = int(np.clip(np.floor(box[0] * scale), 1, w - 2))
        y1 = int(np.clip(np.floor(box[1] * scale), 1, h - 2))
        x2 = int(np.clip(np.ceil(box[2] * scale), x1 + 1, w - 1))
        y2 = int(np.clip(np.ceil(box[3] * scale), y1 + 1, h - 1))
        mask = np.zeros((h, w), np.uint8)
        if x2 - x1 < 3 or y2 - y1 < 3:
            mask[y1:y2, x1:x2] = 1
        else:
            cv2.setRNGSeed(0)  # GrabCut's k-means draws from OpenCV's per-thread RNG
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            cv2.grabCut(
                bgr,
                mask,
                (x1, y1, x2 - x1, y2 - y1),
                bgd,
                fgd,
                self.ITERATIONS,
                cv2.GC_INIT_WITH_RECT,
            )
            mask = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        if mask.shape != size:
            mask = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        # A box-prompted mask stays inside its box (rescaling can spill a pixel or two).
        inside = np.zeros_like(mask)
        x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
        inside[y1 : int(np.ceil(box[3])), x1 : int(np.ceil(box[2]))] = 1
        return mask * inside
