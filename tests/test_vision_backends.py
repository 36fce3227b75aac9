"""The transformers vision backends with tiny random-weight models of the real architectures,
published to a model store and loaded through the real path (RIVEG_<STAGE>_MODEL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the transformers backends need transformers")

from riveg.core.config import load_settings
from riveg.core.storage import LocalObjectStore
from riveg.serving.manager import ModelManager, warm
from riveg.serving.modelstore import ModelRef, ModelStore
from tests.support import tiny

IMAGE = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)  # h=100, w=200
ENTITIES = [
    {"text": "Eileen Collins", "start": 0, "end": 14, "type": "PER",
     "expression": "Eileen Collins(PER)-an astronaut"},
    {"text": "NASA", "start": 20, "end": 24, "type": "ORG", "expression": ""},
    {"text": "Houston", "start": 30, "end": 37, "type": "LOC", "expression": "Houston(LOC)-a city"},
]  # fmt: skip


def _served(tmp_path: Path, stage: str, registry, folder: Path, backend: str):
    """Publish folder as <stage>/tiny@1 in a model store, load it as configured, warm it."""
    root = tmp_path / "models"
    ModelStore(LocalObjectStore(root), tmp_path / "cache", prefix="").publish(
        stage, ModelRef("tiny", "1"), folder, backend=backend
    )
    settings = load_settings(models_store_path=root, **{f"{stage}_model": "tiny@1"})
    manager = ModelManager.from_settings(stage, registry, settings)
    warm(manager.current)
    assert manager.current.model == "tiny@1" and manager.backend_name == backend
    return manager.current


def _count_forwards(module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _force(outputs, query: int, box: list[float]) -> None:
    """Make ``query`` the best detection for every phrase, with a known normalised box."""
    import torch

    outputs.logits.fill_(-10.0)
    outputs.logits[0, query, :] = 10.0  # OWL: [patches, queries]; DINO: [queries, tokens]
    outputs.pred_boxes[0, query] = torch.tensor(box)


@pytest.mark.parametrize(
    ("v2", "expected"),
    [
        (True, [80.0, 40.0, 120.0, 60.0]),  # fractions of the padded 200 x 200 square
        (False, [80.0, 20.0, 120.0, 30.0]),  # fractions of width and height
    ],
)
def test_owl_boxes_are_original_image_pixels(tmp_path: Path, v2: bool, expected) -> None:
    from services.vg.backends import VG_BACKENDS

    backend = _served(tmp_path, "vg", VG_BACKENDS, tiny.save_tiny_owl(tmp_path / "m", v2), "owl")
    assert backend.v2 is v2
    calls = _count_forwards(backend.net)
    results = backend.ground(IMAGE, ENTITIES)
    assert len(results) == 3 and calls == [1]  # one forward pass for the whole batch
    for box, score in results:
        assert 0.0 <= score <= 1.0
        if box is not None:
            assert 0 <= box[0] <= box[2] <= 200 and 0 <= box[1] <= box[3] <= 100
    backend.net.register_forward_hook(lambda _m, _a, out: _force(out, 3, [0.5, 0.25, 0.2, 0.1]))
    for box, score in backend.ground(IMAGE, ENTITIES):
        assert box == pytest.approx(expected) and score > 0.99


def test_grounding_dino_scores_each_phrase_and_maps_boxes(tmp_path: Path) -> None:
    from services.ve.groundability import minilm_path
    from services.vg.backends import VG_BACKENDS

    folder = tiny.save_tiny_grounding_dino(tmp_path / "m", minilm_path())
    backend = _served(tmp_path, "vg", VG_BACKENDS, folder, "grounding-dino")
    calls = _count_forwards(backend.net)
    results = backend.ground(IMAGE, ENTITIES)
    assert len(results) == 3 and calls == [1]
    backend.net.register_forward_hook(lambda _m, _a, out: _force(out, 5, [0.5, 0.25, 0.2, 0.1]))
    for box, score in backend.ground(IMAGE, ENTITIES):
        assert box == pytest.approx([80.0, 20.0, 120.0, 30.0]) and score > 0.99


def test_sam_masks_have_the_image_size_and_encode_once(tmp_path: Path) -> None:
    from services.seg.backends import SEG_BACKENDS

    backend = _served(tmp_path, "seg", SEG_BACKENDS, tiny.save_tiny_sam(tmp_path / "m"), "sam")
    encodings = _count_forwards(backend.net.vision_encoder)
    masks = backend.segment(IMAGE, [[10, 10, 50, 60], [100, 20, 190, 90], [0, 0, 200, 100]])
    assert encodings == [1]
    assert [m.shape for m in masks] == [(100, 200)] * 3
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)
    assert backend.segment(IMAGE, []) == []


def test_segment_anything_reports_a_missing_package(tmp_path: Path, monkeypatch) -> None:
    import builtins

    from services.seg.backends import SEG_BACKENDS

    real_import = builtins.__import__

    def no_sam(name, *args, **kwargs):
        if name.startswith("segment_anything"):
            raise ModuleNotFoundError("No module named 'segment_anything'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sam)
    backend = SEG_BACKENDS.create("segment-anything", load_settings())
    backend.model_dir = tmp_path
    with pytest.raises(RuntimeError, match="segment_anything package and a working torchvision"):
        backend.load()


def test_clip_scores_every_expression_in_one_pass(tmp_path: Path) -> None:
    from services.ve.backends import VE_BACKENDS, calibrate_threshold

    folder = tiny.save_tiny_clip(tmp_path / "m")
    (folder / "riveg-ve.json").write_text('{"threshold": 0.0, "temperature": 0.05}')
    backend = _served(tmp_path, "ve", VE_BACKENDS, folder, "clip")
    calls = _count_forwards(backend.net)
    results = backend.entail(IMAGE, ENTITIES)
    assert calls == [1] and len(results) == 3
    cosine = backend.similarities(IMAGE, ENTITIES)
    for (groundable, score), c in zip(results, cosine, strict=True):
        assert groundable == (c >= 0.0) and 0.0 <= score <= 1.0
        assert (score >= 0.5) == groundable
    labels = np.array([False, False, True, True])
    assert calibrate_threshold(np.array([0.1, 0.2, 0.3, 0.4]), labels) == pytest.approx(0.25)


def test_backends_without_weights_say_what_to_set() -> None:
    from services.vg.backends import VG_BACKENDS

    backend = VG_BACKENDS.create("owl", load_settings())
    with pytest.raises(ValueError, match="RIVEG_<STAGE>_MODEL=name@version"):
        backend.load()


def test_itm_head_matches_every_expression_against_one_image_encoding(tmp_path: Path) -> None:
    import torch

    from services.ve.backends import VE_BACKENDS
    from services.ve.groundability import minilm_path

    folder = tiny.save_tiny_blip_itm(tmp_path / "m", minilm_path())
    backend = _served(tmp_path, "ve", VE_BACKENDS, folder, "itm")
    encodings = _count_forwards(backend.net.vision_model)
    results = backend.entail(IMAGE, ENTITIES)
    assert encodings == [1] and len(results) == 3
    texts = ["Eileen Collins an astronaut", "NASA", "Houston a city"]
    inputs = backend.processor(images=[IMAGE] * 3, text=texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        reference = backend.net(**inputs, use_itm_head=True).itm_score.softmax(-1)[:, 1]
    for (groundable, score), expected in zip(results, reference.tolist(), strict=True):
        assert score == pytest.approx(expected, abs=1e-4)
        assert groundable == (score >= backend.threshold)
