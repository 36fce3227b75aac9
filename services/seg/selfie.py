"""MediaPipe's bundled selfie (person) segmentation as a box-prompted segmenter for people."""

from __future__ import annotations

import threading

import mediapipe as mp
import numpy as np


class SelfieSegmenter:
    """Per-pixel person probability for an RGB image (MediaPipe selfie segmentation, general
    model; weights in the mediapipe wheel)."""

    name = "mediapipe-selfie"
    version = "0.10.21"

    def __init__(self) -> None:
        self._graph = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self._lock = threading.Lock()  # MediaPipe graphs are not thread-safe

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """HxW float32 in [0, 1]: how likely each pixel belongs to a person."""
        with self._lock:
            result = self._graph.process(np.ascontiguousarray(rgb))
        return np.asarray(result.segmentation_mask, np.float32)

    def close(self) -> None:
        """Release the MediaPipe graph."""
        self._graph.close()
