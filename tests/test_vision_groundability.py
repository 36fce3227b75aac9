"""The VE groundability default: scorer, committed weights, `riveg ve eval`, and the combined
backend on the sample image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from riveg.data.conll import shared_datasets_dir
from services.ve.groundability import WEIGHTS, GroundabilityModel, scores
from tests.conftest import SAMPLE_TEXT

GMNER = shared_datasets_dir() / "twitter_gmner"
RIVEG = [sys.executable, "-m", "riveg.cli"]


def _entity(text: str, kind: str, expression: str = "") -> dict:
    start = SAMPLE_TEXT.index(text)
    return {"text": text, "start": start, "end": start + len(text), "type": kind,
            "expression": expression}  # fmt: skip


def test_scores_are_fractions_of_groundable() -> None:
    gold = np.array([True, True, False, False, False])
    result = scores(np.array([True, False, True, False, False]), gold)
    assert result["accuracy"] == 0.6 and result["precision"] == 0.5 and result["recall"] == 0.5
    assert result["f1"] == 0.5 and result["majority_baseline_accuracy"] == 0.6
    assert result["entities"] == 5 and result["groundable_fraction"] == 0.4


def test_committed_weights_are_small_and_load() -> None:
    assert WEIGHTS.is_file(), "run: riveg ve train --data train.txt --xml xml"
    assert WEIGHTS.stat().st_size < 100_000
    model = GroundabilityModel.load(WEIGHTS)
    assert model.coef.shape == (384 * 2 + 8,) and 0 < model.threshold < 1


def _small_conll(tmp_path: Path, posts: int) -> Path:
    text = (GMNER / "dev.txt").read_text().split("\n\n")
    path = tmp_path / "dev-small.txt"
    path.write_text("\n\n".join(text[:posts]) + "\n")
    return path


@pytest.mark.skipif(not (GMNER / "dev.txt").is_file(), reason="Twitter-GMNER is not in datasets")
def test_ve_eval_cli_scores_gold_entities(tmp_path: Path) -> None:
    data = _small_conll(tmp_path, 120)
    done = subprocess.run(
        [*RIVEG, "ve", "eval", "--data", str(data), "--xml", str(GMNER / "xml"), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("accuracy", "precision", "recall", "f1", "majority_baseline_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["entities"] > 100 and result["majority_baseline_accuracy"] >= 0.5
    assert result["accuracy"] > result["majority_baseline_accuracy"]  # learnt something
    assert set(result["per_rule"]) >= {"accuracy", "f1"}


def test_ve_eval_cli_refuses_a_missing_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [*RIVEG, "ve", "eval", "--data", str(tmp_path / "none.txt"), "--xml", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "none.txt" in done.stderr and not done.stdout


def test_groundability_backend_combines_text_and_the_person_detector(sample_bytes) -> None:
    from riveg.core.config import load_settings
    from riveg.core.images import image_array
    from services.ve.backends import VE_BACKENDS

    backend = VE_BACKENDS.create("groundability", load_settings())
    backend.load()
    image = image_array(sample_bytes)
    entities = [
        _entity("Eileen Collins", "PER", "Eileen Collins(PER)-an astronaut"),
        _entity("NASA", "ORG", "NASA(ORG)-a space agency"),
    ]
    (person, person_score), (org, org_score) = backend.entail(image, entities)
    assert person and 0.5 <= person_score <= 1.0
    assert not org and org_score < 0.5
    blank = np.full((256, 256, 3), 255, np.uint8)  # no person in the image: PER not groundable
    assert backend.entail(blank, entities[:1])[0][0] is False
    calls = []
    original = backend.detector.detect
    backend.detector.detect = lambda img: calls.append(1) or original(img)
    backend.entail(image, [entities[1], entities[1]])
    assert calls == []  # no PER in the batch: the detector does not run
    backend.entail(image, [entities[0], entities[0], entities[1]])
    assert calls == [1]  # once per image, whatever the batch size
