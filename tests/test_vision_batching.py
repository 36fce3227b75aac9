"""The transformers vision backends' ``<name>_batch``: several images in ONE model forward (the
vision tower, the backbone or SAM's image encoder runs once for the whole batch), each item's
answer that of its single call, and a bad item failing only its own slot.

Tiny random-weight models of the real architectures (``tests/support/tiny.py``), published to a
model store and loaded through the real path, as in ``tests/test_vision_backends.py``.

Tolerances (measured on these models: CLIP scores differ by at most 1e-6, every other
backend's results were bit-identical): scores within 1e-4 absolute, boxes within 1e-3 px and
the same boxes found (None where the single call has None), masks with IoU >= 0.99 (a logit
next to 0 may flip a pixel when a batched matrix product sums in another order). Grounding
DINO pads a batch's images to a common size (see ``test_grounding_dino_pads_images_together``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the transformers backends need transformers")

from tests.support import tiny
from tests.test_vision_backends import ENTITIES, _served

SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 1e-3  # px
MIN_IOU = 0.99

_rng = np.random.default_rng(7)
# Three sizes (landscape, square, portrait) and a fourth image whose call has nothing to find.
IMAGES = [
    _rng.integers(0, 255, size, dtype=np.uint8)
    for size in [(100, 200, 3), (80, 80, 3), (90, 60, 3), (70, 50, 3)]
]
# Grounding DINO resizes to its own aspect ratio; these all become 48 x 96 (no padding).
# (The tiny Swin backbone also needs at least 96 px on one side after resizing.)
WIDE_IMAGES = [
    _rng.integers(0, 255, size, dtype=np.uint8)
    for size in [(100, 200, 3), (50, 100, 3), (60, 120, 3), (40, 80, 3)]
]
ENTITY_LISTS = [ENTITIES, ENTITIES[2:], ENTITIES[:2], []]  # 3, 1, 2 and 0 entities
BOX_LISTS = [
    [[10, 10, 50, 60], [100, 20, 190, 90], [0, 0, 200, 100]],
    [[5, 5, 70, 70]],
    [[0, 30, 60, 90], [10, 10, 40, 40]],
    [],
]
BAD_IMAGES = [np.zeros((0, 0, 3), np.uint8), np.zeros((10, 10), np.uint8)]  # empty, no channels


@dataclass
class Spec:
    """How to build, serve and inspect one backend."""

    stage: str
    backend: str
    save: Callable[[Path], Path]
    vision: Callable[[Any], Any]  # the module every image goes through once per forward
    method: str
    images: list[np.ndarray]


def _minilm_vocab() -> Path:
    from services.ve.groundability import minilm_path

    return minilm_path()


SPECS = {
    "clip": Spec("ve", "clip", tiny.save_tiny_clip, lambda b: b.net.vision_model, "entail", IMAGES),
    "itm": Spec(
        "ve",
        "itm",
        lambda f: tiny.save_tiny_blip_itm(f, _minilm_vocab()),
        lambda b: b.net.vision_model,
        "entail",
        IMAGES,
    ),
    "owl-v2": Spec(
        "vg",
        "owl",
        lambda f: tiny.save_tiny_owl(f, v2=True),
        lambda b: b.net.owlv2.vision_model,
        "ground",
        IMAGES,
    ),
    "owl-v1": Spec(
        "vg",
        "owl",
        lambda f: tiny.save_tiny_owl(f, v2=False),
        lambda b: b.net.owlvit.vision_model,
        "ground",
        IMAGES,
    ),
    "grounding-dino": Spec(
        "vg",
        "grounding-dino",
        lambda f: tiny.save_tiny_grounding_dino(f, _minilm_vocab()),
        lambda b: b.net.model.backbone,
        "ground",
        WIDE_IMAGES,
    ),
    "sam": Spec(
        "seg", "sam", tiny.save_tiny_sam, lambda b: b.net.vision_encoder, "segment", IMAGES
    ),
}


def _serve(tmp_path: Path, spec: Spec):
    from services.seg.backends import SEG_BACKENDS
    from services.ve.backends import VE_BACKENDS
    from services.vg.backends import VG_BACKENDS

    registry = {"ve": VE_BACKENDS, "vg": VG_BACKENDS, "seg": SEG_BACKENDS}[spec.stage]
    return _served(tmp_path, spec.stage, registry, spec.save(tmp_path / "m"), spec.backend)


def _image_batches(module) -> list[int]:
    """The image-batch size of every forward of ``module`` (its pixel values come first)."""
    sizes: list[int] = []

    def count(_module, args, kwargs) -> None:
        pixels = args[0] if args else kwargs["pixel_values"]
        sizes.append(int(pixels.shape[0]))

    module.register_forward_pre_hook(count, with_kwargs=True)
    return sizes


def _items(spec: Spec, images: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, list]]:
    prompts = BOX_LISTS if spec.stage == "seg" else ENTITY_LISTS
    return list(zip(images or spec.images, prompts, strict=True))


def _assert_same(stage: str, batched: list, alone: list) -> None:
    """One item's batched answer against its single call's, within the stated tolerances."""
    assert len(batched) == len(alone)
    for got, want in zip(batched, alone, strict=True):
        if stage == "seg":
            assert got.shape == want.shape and got.dtype == want.dtype == np.uint8
            union = np.logical_or(got, want).sum()
            iou = np.logical_and(got, want).sum() / union if union else 1.0
            assert iou >= MIN_IOU
        elif stage == "ve":
            assert got[0] == want[0] and got[1] == pytest.approx(want[1], abs=SCORE_TOLERANCE)
        else:
            (box, score), (want_box, want_score) = got, want
            assert score == pytest.approx(want_score, abs=SCORE_TOLERANCE)
            assert (box is None) == (want_box is None)
            if box is not None:
                assert box == pytest.approx(want_box, abs=BOX_TOLERANCE)


@pytest.mark.parametrize("key", list(SPECS))
def test_batch_is_one_forward_and_equals_single_calls(tmp_path: Path, key: str) -> None:
    spec = SPECS[key]
    backend = _serve(tmp_path, spec)
    items = _items(spec)
    single = getattr(backend, spec.method)
    alone = [single(*item) for item in items]
    forwards = _image_batches(spec.vision(backend))
    batched = getattr(backend, f"{spec.method}_batch")(items)
    assert forwards == [3]  # ONE image forward for the three items with something to find
    assert batched[3] == [] and alone[3] == []
    for item, got, want in zip(items, batched, alone, strict=True):
        assert not isinstance(got, Exception)
        assert len(got) == len(item[1])
        _assert_same(spec.stage, got, want)


@pytest.mark.parametrize("key", list(SPECS))
def test_a_bad_item_fails_only_its_own_slot(tmp_path: Path, key: str) -> None:
    spec = SPECS[key]
    backend = _serve(tmp_path, spec)
    good = _items(spec)[:3]
    prompts = good[0][1]
    items = [good[0], (BAD_IMAGES[0], prompts), good[1], (BAD_IMAGES[1], prompts), good[2]]
    forwards = _image_batches(spec.vision(backend))
    results = getattr(backend, f"{spec.method}_batch")(items)
    assert forwards == [3]  # the bad items never reach the forward
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)
    single = getattr(backend, spec.method)
    for index, item in ((0, good[0]), (2, good[1]), (4, good[2])):
        _assert_same(spec.stage, results[index], single(*item))
    with pytest.raises(ValueError, match="HxWx3"):  # the single call raises the same error
        single(*items[1])


def test_a_failing_joint_forward_runs_the_items_one_by_one(tmp_path: Path) -> None:
    """When the forward of the whole batch fails (say, out of memory), each item runs alone."""
    spec = SPECS["clip"]
    backend = _serve(tmp_path, spec)
    items = _items(spec)
    alone = [backend.entail(*item) for item in items]

    def refuse_batches(_module, args, kwargs) -> None:
        if kwargs["pixel_values"].shape[0] > 1:
            raise RuntimeError("out of memory")

    forwards = _image_batches(backend.net.vision_model)
    backend.net.vision_model.register_forward_pre_hook(refuse_batches, with_kwargs=True)
    batched = backend.entail_batch(items)
    assert forwards == [3, 1, 1, 1]  # the batch, then each item with entities alone
    for got, want in zip(batched, alone, strict=True):
        _assert_same("ve", got, want)


def test_grounding_dino_pads_images_together(tmp_path: Path) -> None:
    """Images of different resized sizes are padded (bottom/right, masked) to one batch. The
    transformer ignores the padding but the Swin backbone's windows see it, so an item's answer
    may differ from its single call (with these random weights, whose scores are all near 0 or
    1, the best box can move); what must hold is one forward, well-formed answers, and no
    influence of the other images' content: changing it leaves an item's answer as it was."""
    spec = SPECS["grounding-dino"]
    backend = _serve(tmp_path, spec)
    sizes = [(100, 200, 3), (70, 100, 3), (64, 160, 3), (40, 80, 3)]
    images = [_rng.integers(0, 255, size, dtype=np.uint8) for size in sizes]
    shapes = {
        backend.processor.image_processor(images=i, return_tensors="pt")["pixel_values"].shape
        for i in images
    }
    assert len(shapes) > 1  # really padded
    forwards = _image_batches(spec.vision(backend))
    batched = backend.ground_batch(_items(spec, images))
    assert forwards == [3]
    for (image, entities), groundings in zip(_items(spec, images), batched, strict=True):
        assert len(groundings) == len(entities)
        height, width = image.shape[:2]
        for box, score in groundings:
            assert 0.0 <= score <= 1.0 and (box is not None) == (score >= backend.threshold)
            if box is not None:
                assert 0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height
    others = [images[0]] + [_rng.integers(0, 255, i.shape, dtype=np.uint8) for i in images[1:]]
    _assert_same("vg", backend.ground_batch(_items(spec, others))[0], batched[0])
