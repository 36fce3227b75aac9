"""The evaluation harness on small hand-made inputs (no dataset needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from riveg.cli import main
from riveg.core.images import mask_to_rle
from riveg.data.conll import Post
from riveg.data.gmner import ImageBoxes, ground_post, read_voc_xml
from riveg.evaluation import gmner
from riveg.evaluation.predictions import PredictionError, parse_prediction_line, read_predictions
from riveg.evaluation.spans import align_to_gold, score_spans, score_tags

# "Ted Cruz speaks in Paris , Paris loves Ted" : PER(0,8) LOC(19,24) LOC(27,32)
TOKENS = ["Ted", "Cruz", "speaks", "in", "Paris", ",", "Paris", "loves", "Ted"]
TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-LOC", "O", "O"]
CRUZ_BOX = (10.0, 10.0, 110.0, 60.0)


def _post(image: ImageBoxes | None = None):
    return ground_post(Post("p1", TOKENS, TAGS), image)


def _pred(*entities: dict, text: str | None = None) -> dict:
    line = {"id": "p1", "entities": list(entities)}
    if text is not None:
        line["text"] = text
    return line


def _score(pred: dict, image: ImageBoxes | None = None, iou: float = 0.5) -> dict:
    post = parse_prediction_line(json.dumps(pred), "test:1")
    return gmner.score(gmner.align([_post(image)], {"p1": post}), iou)


def _counts(scores: dict, metric: str) -> tuple[int, int, int]:
    return scores[metric]["tp"], scores[metric]["n_pred"], scores[metric]["n_gold"]


IMAGE = ImageBoxes(200, 100, {"Ted Cruz": [CRUZ_BOX]})
GOLD_AS_PRED = [
    {"text": "Ted Cruz", "start": 0, "end": 8, "type": "PER", "box": list(CRUZ_BOX)},
    {"text": "Paris", "start": 19, "end": 24, "type": "LOC", "box": None},
    {"text": "Paris", "start": 27, "end": 32, "type": "LOC", "box": None},
]


def test_box_iou_convention() -> None:
    assert gmner.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert gmner.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert gmner.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert gmner.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert gmner.box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5  # exactly the threshold


def test_gold_against_itself_is_perfect() -> None:
    scores = _score(_pred(*GOLD_AS_PRED), IMAGE)
    for metric in ("gmner", "mner", "eeg"):
        assert _counts(scores, metric) == (3, 3, 3)
        assert scores[metric]["f1"] == 1.0


def test_type_box_and_none_rules() -> None:
    wrong_type = [dict(GOLD_AS_PRED[0], type="ORG"), *GOLD_AS_PRED[1:]]
    scores = _score(_pred(*wrong_type), IMAGE)
    assert _counts(scores, "gmner") == (2, 3, 3)
    assert _counts(scores, "mner") == (2, 3, 3)
    assert _counts(scores, "eeg") == (3, 3, 3)

    half = [dict(GOLD_AS_PRED[0], box=[10, 10, 110, 35]), *GOLD_AS_PRED[1:]]  # IoU exactly 0.5
    assert _counts(_score(_pred(*half), IMAGE, 0.5), "gmner") == (3, 3, 3)
    assert _counts(_score(_pred(*half), IMAGE, 0.55), "gmner") == (2, 3, 3)

    no_box = [dict(GOLD_AS_PRED[0], box=None), *GOLD_AS_PRED[1:]]
    scores = _score(_pred(*no_box), IMAGE)
    assert _counts(scores, "gmner") == (2, 3, 3)
    assert _counts(scores, "eeg") == (2, 3, 3)
    assert _counts(scores, "mner") == (3, 3, 3)

    spurious_box = [*GOLD_AS_PRED[:2], dict(GOLD_AS_PRED[2], box=[0, 0, 5, 5])]
    assert _counts(_score(_pred(*spurious_box), IMAGE), "gmner") == (2, 3, 3)


def test_each_gold_entity_is_matched_once() -> None:
    duplicated = [*GOLD_AS_PRED, GOLD_AS_PRED[0], GOLD_AS_PRED[0]]
    scores = _score(_pred(*duplicated), IMAGE)
    assert _counts(scores, "gmner") == (3, 5, 3)
    # by string: three "Paris" predictions for two gold "Paris"
    paris = {"text": "Paris", "type": "LOC", "box": None}
    scores = _score(_pred(GOLD_AS_PRED[0], paris, paris, paris), IMAGE)
    assert _counts(scores, "gmner") == (3, 4, 3)


def test_span_then_string_matching() -> None:
    # no offsets: matched by string, in text order, same type first
    by_string = [{k: v for k, v in e.items() if k not in ("start", "end")} for e in GOLD_AS_PRED]
    assert _counts(_score(_pred(*by_string), IMAGE), "gmner") == (3, 3, 3)
    # offsets into a raw text that differs from the tokens: they do not line up -> string
    raw = "Ted Cruz speaks in Paris, Paris loves Ted"
    shifted = [
        dict(GOLD_AS_PRED[0]),
        dict(GOLD_AS_PRED[1]),
        dict(GOLD_AS_PRED[2], start=25, end=30),
    ]
    scores = _score(_pred(*shifted, text=raw), IMAGE)
    assert _counts(scores, "gmner") == (3, 3, 3)
    # a span that lines up but is not a gold span is wrong even though the string exists
    ted = {"text": "Ted", "start": 39, "end": 42, "type": "PER", "box": list(CRUZ_BOX)}
    assert _counts(_score(_pred(ted), IMAGE), "gmner") == (0, 1, 3)
    # the same prediction without a span matches no gold string ("Ted" is not an entity)
    ted_str = {k: v for k, v in ted.items() if k not in ("start", "end")}
    assert _counts(_score(_pred(ted_str), IMAGE), "gmner") == (0, 1, 3)


def test_align_to_gold_prefers_same_type() -> None:
    gold = [(0, 5, "Apple", "ORG"), (10, 15, "Apple", "MISC")]
    pred = [(None, None, "Apple", "MISC"), (None, None, "Apple", "ORG")]
    assert align_to_gold(gold, pred) == [1, 0]
    assert align_to_gold(gold, [(0, 5, "Apple", "X"), (None, None, "Apple", "ORG")]) == [0, 1]


def test_score_tags_and_score_spans_agree() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-OTHER", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-MISC", "O"]]
    scores = score_tags(gold, pred)
    assert (scores["tp"], scores["n_pred"], scores["n_gold"]) == (2, 3, 3)
    assert scores == score_spans(
        [[(0, 2, "PER"), (3, 4, "LOC")], [(0, 1, "MISC")]],
        [[(0, 2, "PER"), (3, 4, "ORG")], [(0, 1, "MISC")]],
    )
    with pytest.raises(ValueError, match="post 0"):
        score_tags([["O"]], [["O", "O"]])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"entities": []}', "'id'"),
        ('{"id": "1"}', "'entities'"),
        ('{"id": "1", "entities": [{"text": "A"}]}', "'type'"),
        ('{"id": "1", "entities": [{"text": "A", "type": "FOOD"}]}', "unknown entity type"),
        ('{"id": "1", "entities": [{"text": "A", "type": "PER", "start": 0}]}', "only one"),
        ('{"id": "1", "entities": [{"text": "A", "type": "PER", "box": [1, 2]}]}', "'box'"),
        ('{"id": "1", "entities": [{"text": "A", "type": "PER", "mask": {"size": [2]}}]}', "mask"),
    ],
)
def test_malformed_prediction_lines(line: str, message: str) -> None:
    with pytest.raises(PredictionError, match=message):
        parse_prediction_line(line, "f:3")


def test_read_predictions_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pred.jsonl"
    path.write_text('{"id": "a", "entities": []}\n\n{"id": "b", "entities": [}\n')
    with pytest.raises(PredictionError, match=r"pred\.jsonl:3: not valid JSON"):
        read_predictions(path)
    path.write_text('{"id": "a", "entities": []}\n{"id": "a", "entities": []}\n')
    with pytest.raises(PredictionError, match=r":2: id 'a' already given on line 1"):
        read_predictions(path)


def _mask(box: tuple[int, int, int, int], size: tuple[int, int] = (100, 200)) -> dict:
    array = np.zeros(size, dtype=np.uint8)
    x1, y1, x2, y2 = box
    array[y1:y2, x1:x2] = 1
    return mask_to_rle(array)


def test_masks_smner_ees() -> None:
    gold_masks = {
        "p1": parse_prediction_line(
            json.dumps(_pred(dict(GOLD_AS_PRED[0], mask=_mask((10, 10, 110, 60))))), "gold:1"
        )
    }
    near = dict(GOLD_AS_PRED[0], mask=_mask((30, 10, 130, 60)))  # IoU 80/120
    far = dict(GOLD_AS_PRED[0], mask=_mask((70, 10, 170, 60)))  # IoU 40/160
    near_org = dict(near, type="ORG")
    for first, smner, ees in ((near, 3, 3), (far, 2, 2), (near_org, 2, 3)):
        pred = {"p1": parse_prediction_line(json.dumps(_pred(first, *GOLD_AS_PRED[1:])), "p:1")}
        scores = gmner.score(gmner.align([_post(IMAGE)], pred, gold_masks), 0.5)
        assert _counts(scores, "smner") == (smner, 3, 3)
        assert _counts(scores, "ees") == (ees, 3, 3)
        assert _counts(scores, "gmner")[0] == 3 - (first is near_org)  # boxes still right
    # no masks in the predictions: no SMNER/EES
    pred = {"p1": parse_prediction_line(json.dumps(_pred(*GOLD_AS_PRED)), "p:1")}
    assert "smner" not in gmner.score(gmner.align([_post(IMAGE)], pred, gold_masks))
    wrong_size = dict(GOLD_AS_PRED[0], mask=_mask((0, 0, 5, 5), (50, 50)))
    pred = {"p1": parse_prediction_line(json.dumps(_pred(wrong_size)), "p:1")}
    with pytest.raises(ValueError, match="differs from gold"):
        gmner.align([_post(IMAGE)], pred, gold_masks)


def _write_tiny_dataset(root: Path) -> tuple[Path, Path]:
    gold = root / "gold.txt"
    lines = ["IMGID:p1", *(f"{t}\t{g}" for t, g in zip(TOKENS, TAGS, strict=True)), ""]
    lines += ["IMGID:p2", "Hello\tO", "Berlin\tB-LOC", ""]
    gold.write_text("\n".join(lines) + "\n")
    xml = root / "xml"
    xml.mkdir()
    (xml / "p1.xml").write_text(
        "<annotation><size><width>200</width><height>100</height><depth>3</depth></size>"
        "<object><name>Ted Cruz</name><bndbox><xmin>10</xmin><ymin>10</ymin>"
        "<xmax>110</xmax><ymax>60</ymax></bndbox></object></annotation>"
    )
    return gold, xml


def test_xml_reader(tmp_path: Path) -> None:
    _, xml = _write_tiny_dataset(tmp_path)
    image = read_voc_xml(xml / "p1.xml")
    assert (image.width, image.height, image.boxes) == (200, 100, {"Ted Cruz": [CRUZ_BOX]})
    (xml / "bad.xml").write_text("<annotation><object><name>x</name></object></annotation>")
    with pytest.raises(ValueError, match="lacks"):
        read_voc_xml(xml / "bad.xml")


def test_cli_gmner_and_mner(tmp_path: Path) -> None:
    gold, xml = _write_tiny_dataset(tmp_path)
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps(_pred(*GOLD_AS_PRED)) + "\n")  # p2 missing: Berlin is a FN
    runner = CliRunner()
    args = ["eval", "gmner", "--gold", str(gold), "--xml", str(xml), "--pred", str(pred)]
    result = runner.invoke(main, [*args, "--json", "--iou-sweep", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert [scores[m]["tp"] for m in ("gmner", "mner", "eeg")] == [3, 3, 3]
    assert scores["gmner"]["n_gold"] == 4
    assert scores["gmner"]["recall"] == 0.75
    assert "1 gold posts have no prediction" in result.stderr
    sweep = json.loads((tmp_path / "sweep" / "iou_sweep.json").read_text())
    assert sweep["thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert sweep["gmner_f1"] == [pytest.approx(6 / 7)] * 10
    assert (tmp_path / "sweep" / "iou_sweep.png").read_bytes()[:4] == b"\x89PNG"

    result = runner.invoke(
        main, ["eval", "mner", "--gold", str(gold), "--pred", str(pred), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["mner"]["tp"] == 3

    masks = tmp_path / "gold_masks.jsonl"
    masks.write_text(json.dumps(_pred(dict(GOLD_AS_PRED[0], mask=_mask((10, 10, 110, 60))))))
    far = dict(GOLD_AS_PRED[0], mask=_mask((70, 10, 170, 60)))
    pred.write_text(json.dumps(_pred(far, *GOLD_AS_PRED[1:])) + "\n")
    result = runner.invoke(main, [*args, "--gold-masks", str(masks), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert [scores[m]["tp"] for m in ("gmner", "smner", "ees")] == [3, 2, 2]
    assert "SMNER" in result.stdout

    pred.write_text(json.dumps(_pred(*GOLD_AS_PRED)) + "\n" + '{"id": "p2", "entities": [\n')
    result = runner.invoke(main, args)
    assert result.exit_code != 0
    assert "pred.jsonl:2: not valid JSON" in result.stderr
    result = runner.invoke(main, [*args[:-1], str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0
    assert "does not exist" in result.stderr


def test_failed_batch_posts_count_as_predicting_nothing() -> None:
    failed = parse_prediction_line('{"id": "p9", "error": "PostError: not an image"}', "f:1")
    assert failed.id == "p9" and failed.entities == []
    with pytest.raises(PredictionError, match="'entities' must be a list"):
        parse_prediction_line('{"id": "p9"}', "f:2")
