"""The scorer on the real Twitter-GMNER dev gold: gold against itself, controlled changes with
exact expected counts, and where RiVEG's string-matching scorer disagrees (docs/evaluation.md)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from riveg.cli import main
from riveg.core.images import mask_to_rle
from riveg.data.conll import shared_datasets_dir
from riveg.data.gmner import GroundedPost, read_gmner
from riveg.evaluation import gmner
from riveg.evaluation.predictions import parse_prediction_line

GMNER_DIR = shared_datasets_dir() / "twitter_gmner"
DEV, XML = GMNER_DIR / "dev.txt", GMNER_DIR / "xml"
N_GOLD, N_GROUNDABLE = 2450, 991  # dev entities; those with at least one box
TYPES = ["PER", "LOC", "ORG", "MISC"]

Rows = list[dict]


@pytest.fixture(scope="module")
def posts() -> list[GroundedPost]:
    if not DEV.is_file() or not XML.is_dir():
        pytest.skip(f"Twitter-GMNER dev gold not found under {GMNER_DIR} (set $RIVEG_DATASETS)")
    return read_gmner(DEV, XML)


def gold_rows(posts: list[GroundedPost], masks: bool = False) -> Rows:
    """The gold as result JSONL rows (first gold box of each groundable entity)."""
    rows = []
    for post in posts:
        entities = []
        for e in post.entities:
            entity = {"text": e.text, "start": e.start, "end": e.end, "type": e.type}
            entity["box"] = list(e.boxes[0]) if e.boxes else None
            if masks:
                entity["mask"] = box_mask(e.boxes[0], post) if e.boxes else None
            entities.append(entity)
        rows.append({"id": post.id, "text": post.text, "entities": entities})
    return rows


def box_mask(box: tuple[float, ...], post: GroundedPost, shift: int = 0) -> dict:
    assert post.image is not None
    array = np.zeros((post.image.height, post.image.width), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in box)
    array[y1:y2, x1 + shift : x2 + shift] = 1
    return mask_to_rle(array)


def run(posts: list[GroundedPost], rows: Rows, iou: float = 0.5, masks: Rows | None = None):
    preds = {r["id"]: parse_prediction_line(json.dumps(r), f"row {i}") for i, r in enumerate(rows)}
    gold_masks = None
    if masks is not None:
        gold_masks = {r["id"]: parse_prediction_line(json.dumps(r), "mask") for r in masks}
    return gmner.score(gmner.align(posts, preds, gold_masks), iou)


def counts(scores: dict, metric: str) -> tuple[int, int, int]:
    return scores[metric]["tp"], scores[metric]["n_pred"], scores[metric]["n_gold"]


def edit(rows: Rows, change: Callable[[int, dict], dict | None]) -> Rows:
    """Apply ``change(global entity index, entity)`` to every entity; None drops it."""
    rows, index = copy.deepcopy(rows), 0
    for row in rows:
        kept = []
        for entity in row["entities"]:
            new = change(index, entity)
            index += 1
            if new is not None:
                kept.append(new)
        row["entities"] = kept
    return rows


def test_gold_against_itself(posts: list[GroundedPost]) -> None:
    assert sum(len(p.entities) for p in posts) == N_GOLD
    assert sum(e.boxes is not None for p in posts for e in p.entities) == N_GROUNDABLE
    scores = run(posts, gold_rows(posts))
    for metric in ("gmner", "mner", "eeg"):
        assert counts(scores, metric) == (N_GOLD, N_GOLD, N_GOLD)
        assert scores[metric]["precision"] == scores[metric]["recall"] == 1.0
        assert scores[metric]["f1"] == 1.0
    # without offsets (surface-string matching) the result is the same
    no_spans = edit(gold_rows(posts), lambda i, e: {k: e[k] for k in ("text", "type", "box")})
    assert counts(run(posts, no_spans), "gmner") == (N_GOLD, N_GOLD, N_GOLD)


def test_gold_masks_against_themselves(posts: list[GroundedPost]) -> None:
    rows = gold_rows(posts, masks=True)
    scores = run(posts, rows, masks=rows)
    for metric in ("gmner", "mner", "eeg", "smner", "ees"):
        assert counts(scores, metric) == (N_GOLD, N_GOLD, N_GOLD)
    by_post = {p.id: p for p in posts}
    shifted = copy.deepcopy(rows)
    moved = 0
    for row in shifted:  # shift every 4th gold mask right by its full width: IoU 0
        for entity in row["entities"]:
            if entity["mask"] is not None and moved % 4 == 0:
                width = int(entity["box"][2]) - int(entity["box"][0])
                entity["mask"] = box_mask(entity["box"], by_post[row["id"]], width)
            moved += entity["mask"] is not None
    expected = N_GOLD - len(range(0, N_GROUNDABLE, 4))
    scores = run(posts, shifted, masks=rows)
    assert counts(scores, "smner") == (expected, N_GOLD, N_GOLD)
    assert counts(scores, "ees") == (expected, N_GOLD, N_GOLD)
    assert counts(scores, "gmner") == (N_GOLD, N_GOLD, N_GOLD)


def test_dropped_entities(posts: list[GroundedPost]) -> None:
    rows = edit(gold_rows(posts), lambda i, e: None if i % 7 == 0 else e)
    dropped = len(range(0, N_GOLD, 7))  # 350
    for metric in ("gmner", "mner", "eeg"):
        assert counts(run(posts, rows), metric) == (N_GOLD - dropped, N_GOLD - dropped, N_GOLD)


def test_flipped_types(posts: list[GroundedPost]) -> None:
    def flip(index: int, entity: dict) -> dict:
        if index % 5 == 1:
            entity["type"] = TYPES[(TYPES.index(entity["type"]) + 1) % 4]
        return entity

    flipped = len(range(1, N_GOLD, 5))  # 490
    scores = run(posts, edit(gold_rows(posts), flip))
    assert counts(scores, "gmner") == (N_GOLD - flipped, N_GOLD, N_GOLD)
    assert counts(scores, "mner") == (N_GOLD - flipped, N_GOLD, N_GOLD)
    assert counts(scores, "eeg") == (N_GOLD, N_GOLD, N_GOLD)


def test_shifted_boxes_and_sweep(posts: list[GroundedPost]) -> None:
    """Single-box entities shifted right by 20% of their width (IoU 0.8/1.2 = 0.667: right up
    to 0.65, wrong from 0.7) or by 60% (IoU 0.4/1.6 = 0.25: always wrong)."""
    single = {(p.id, e.start) for p in posts for e in p.entities if e.boxes and len(e.boxes) == 1}
    near, far, seen = 0, 0, 0
    rows = gold_rows(posts)
    for row in rows:
        for entity in row["entities"]:
            if (row["id"], entity["start"]) not in single:
                continue
            x1, y1, x2, y2 = entity["box"]
            fraction = (0.2, 0.6, 0.0)[seen % 3]
            seen += 1
            near, far = near + (fraction == 0.2), far + (fraction == 0.6)
            dx = fraction * (x2 - x1)
            entity["box"] = [x1 + dx, y1, x2 + dx, y2]
    assert near > 100 and far > 100
    for iou, wrong in ((0.5, far), (0.65, far), (0.7, near + far), (0.95, near + far)):
        scores = run(posts, rows, iou)
        assert counts(scores, "gmner") == (N_GOLD - wrong, N_GOLD, N_GOLD)
        assert counts(scores, "eeg") == (N_GOLD - wrong, N_GOLD, N_GOLD)
        assert counts(scores, "mner") == (N_GOLD, N_GOLD, N_GOLD)
    preds = {r["id"]: parse_prediction_line(json.dumps(r), "x") for r in rows}
    curve = gmner.sweep(gmner.align(posts, preds))
    expected = [(N_GOLD - (far if t < 0.67 else near + far)) / N_GOLD for t in curve["thresholds"]]
    assert curve["gmner_f1"] == pytest.approx(expected)
    assert curve["mner_f1"] == [1.0] * 10


def test_box_versus_none(posts: list[GroundedPost]) -> None:
    def swap(index: int, entity: dict) -> dict:
        if index % 10 == 0:
            entity["box"] = None if entity["box"] else [0.0, 0.0, 50.0, 50.0]
        return entity

    swapped = len(range(0, N_GOLD, 10))  # 245
    scores = run(posts, edit(gold_rows(posts), swap))
    assert counts(scores, "gmner") == (N_GOLD - swapped, N_GOLD, N_GOLD)
    assert counts(scores, "eeg") == (N_GOLD - swapped, N_GOLD, N_GOLD)
    assert counts(scores, "mner") == (N_GOLD, N_GOLD, N_GOLD)


def test_duplicates_and_missing_posts(posts: list[GroundedPost]) -> None:
    rows = gold_rows(posts)
    for row in rows[:300]:
        row["entities"] = row["entities"] + row["entities"]  # every prediction twice
    extra = sum(len(p.entities) for p in posts[:300])
    scores = run(posts, rows)
    assert counts(scores, "gmner") == (N_GOLD, N_GOLD + extra, N_GOLD)
    missing = sum(len(p.entities) for p in posts[-200:])
    scores = run(posts, gold_rows(posts)[:-200])
    assert counts(scores, "gmner") == (N_GOLD - missing, N_GOLD - missing, N_GOLD)


def test_span_errors(posts: list[GroundedPost]) -> None:
    """A span that lines up but misses the first character is wrong; offsets that do not line
    up with the text (shifted by one, text kept) fall back to the string and are right."""

    def clip(index: int, entity: dict) -> dict:
        if index % 9 == 0 and len(entity["text"]) > 1:
            entity["start"] += 1
            entity["text"] = entity["text"][1:]
        return entity

    clipped = sum(
        1
        for i, e in enumerate(e for p in posts for e in p.entities)
        if i % 9 == 0 and len(e.text) > 1
    )
    scores = run(posts, edit(gold_rows(posts), clip))
    assert counts(scores, "mner") == (N_GOLD - clipped, N_GOLD, N_GOLD)

    def offset(index: int, entity: dict) -> dict:
        entity["start"], entity["end"] = entity["start"] + 1, entity["end"] + 1
        return entity

    scores = run(posts, edit(gold_rows(posts), offset))
    assert counts(scores, "gmner") == (N_GOLD, N_GOLD, N_GOLD)


def riveg_statistic_rule(gold: list[tuple], pred: list[tuple]) -> tuple[int, int, int]:
    """RiVEG's statistic/statistic.py rule, re-stated: lines are (image, "text(TYPE)", box or
    None); a prediction is right when ANY gold line of the same image and string grounds right
    (both None, or IoU >= 0.5 with any of its boxes). Gold lines are not used up."""
    right = 0
    for image, key, box in pred:
        for gold_image, gold_key, gold_boxes in gold:
            if (image, key) != (gold_image, gold_key):
                continue
            if (box is None and gold_boxes is None) or (
                box is not None
                and gold_boxes is not None
                and any(gmner.box_iou(box, b) >= 0.5 for b in gold_boxes)
            ):
                right += 1
                break
    return right, len(pred), len(gold)


def test_differs_from_riveg_string_matching(posts: list[GroundedPost]) -> None:
    """Dev post O_1703: "Vicente Fox says he will only accept Donald Trump ' s lunch invitation
    if Trump apologizes", gold Vicente Fox, Donald Trump, Trump (all PER, all with boxes).
    A system that tags only "Trump" inside "Donald Trump" (a boundary error), with the box of
    the gold "Trump", and also outputs it twice, is credited 3 of 3 by RiVEG's string rule."""
    post = next(p for p in posts if p.id == "O_1703")
    _, _, trump = post.entities
    assert (trump.text, post.text[44:49]) == ("Trump", "Trump")
    boundary_error = {"text": "Trump", "start": 44, "end": 49, "type": "PER"}
    boundary_error["box"] = list(trump.boxes[0])
    row = gold_rows([post])[0]
    row["entities"] = [row["entities"][0], boundary_error, dict(boundary_error)]

    ours = run([post], [row])
    assert counts(ours, "gmner") == (1, 3, 3)  # only Vicente Fox; "Trump" 44-49 is no gold span
    gold_lines = [(post.id, f"{e.text}({e.type})", e.boxes) for e in post.entities]
    pred_lines = [(post.id, f"{e['text']}({e['type']})", e["box"]) for e in row["entities"]]
    assert riveg_statistic_rule(gold_lines, pred_lines) == (3, 3, 3)  # P = R = 1.0

    # without offsets our string fallback pairs the first "Trump" with the gold "Trump" and the
    # second with nothing: each gold entity is matched at most once
    row["entities"] = [
        {k: v for k, v in e.items() if k not in ("start", "end")} for e in row["entities"]
    ]
    assert counts(run([post], [row]), "gmner") == (2, 3, 3)


def test_cli_on_dev(posts: list[GroundedPost], tmp_path: Path) -> None:
    pred = tmp_path / "pred.jsonl"
    rows = edit(gold_rows(posts), lambda i, e: None if i % 7 == 0 else e)
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "gmner", "--gold", str(DEV), "--xml", str(XML), "--pred", str(pred), "--json"]
    result = CliRunner().invoke(main, [*args, "--iou-sweep", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts(scores, "gmner") == (2100, 2100, N_GOLD)
    assert scores["gmner"]["recall"] == pytest.approx(2100 / N_GOLD)
    assert set(scores) >= {"gmner", "mner", "eeg"} and "smner" not in scores
    assert (tmp_path / "sweep" / "iou_sweep.png").is_file()
    result = CliRunner().invoke(main, ["eval", "mner", "--gold", str(DEV), "--pred", str(pred)])
    assert result.exit_code == 0 and "MNER" in result.stdout


def test_string_at_a_non_entity_occurrence(posts: list[GroundedPost]) -> None:
    """Dev post 109976: "The new EMC VNXe3200 Hybrid Storage : ... in the EMC Store ." has gold
    "EMC VNXe3200 Hybrid Storage" (MISC) and "EMC" (ORG, characters 79-82). "EMC" predicted at
    characters 8-11 is a boundary error: right for RiVEG's string rule, wrong for ours."""
    post = next(p for p in posts if p.id == "109976")
    emc = post.entities[1]
    assert (emc.text, emc.start, post.text[8:11]) == ("EMC", 79, "EMC")
    wrong_place = {"text": "EMC", "start": 8, "end": 11, "type": "ORG", "box": list(emc.boxes[0])}
    row = {"id": post.id, "entities": [wrong_place]}
    assert counts(run([post], [row]), "gmner") == (0, 1, 2)
    gold_lines = [(post.id, f"{e.text}({e.type})", e.boxes) for e in post.entities]
    assert riveg_statistic_rule(gold_lines, [(post.id, "EMC(ORG)", wrong_place["box"])]) == (
        1,
        1,
        2,
    )
