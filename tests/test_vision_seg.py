"""The selfie+GrabCut SEG backend: people from MediaPipe's bundled person mask, the rest GrabCut."""

from __future__ import annotations

import numpy as np

from riveg.core.config import load_settings
from riveg.core.images import image_array

FACE = (120, 225)  # (row, column) of the astronaut's face in samples/astronaut.jpg


def test_person_boxes_get_the_body_mask_and_others_grabcut(sample_bytes, monkeypatch) -> None:
    from services.seg.backends import SEG_BACKENDS, GrabCutSegBackend

    backend = SEG_BACKENDS.create("selfie", load_settings())
    backend.load()
    image = image_array(sample_bytes)
    grabcut_boxes: list[list[float]] = []
    original = GrabCutSegBackend.segment

    def counting(self, img, boxes):
        grabcut_boxes.extend(boxes)
        return original(self, img, boxes)

    monkeypatch.setattr(GrabCutSegBackend, "segment", counting)
    body = [0.0, 15.0, 512.0, 512.0]
    masks = backend.segment(image, [body])
    assert grabcut_boxes == []  # the person's box never reaches GrabCut
    (mask,) = masks
    assert mask.shape == (512, 512) and mask.dtype == np.uint8 and mask[FACE] == 1
    assert mask[:15].sum() == 0 and 0.2 < mask.mean() < 0.9  # inside the box, not all of it

    blank = np.full((120, 160, 3), 200, np.uint8)
    blank[40:80, 50:110] = (30, 60, 200)  # a blue block: no person
    (block,) = backend.segment(blank, [[45.0, 35.0, 115.0, 85.0]])
    assert grabcut_boxes == [[45.0, 35.0, 115.0, 85.0]]
    assert block.shape == (120, 160) and block[60, 80] == 1 and block[0, 0] == 0
    assert backend.segment(image, []) == []
