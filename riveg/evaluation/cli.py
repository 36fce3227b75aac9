"""``riveg eval``: score predictions against gold annotations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from riveg.core.cli import EXISTING_FILE, xml_option
from riveg.data.conll import read_conll
from riveg.data.gmner import read_gmner
from riveg.evaluation import gmner
from riveg.evaluation.plot import write_sweep
from riveg.evaluation.predictions import PredictionError, read_predictions

METRIC_ORDER = ("gmner", "mner", "eeg", "smner", "ees")


@click.group("eval")
def eval_group() -> None:
    """Score predictions the way the papers do (GMNER, MNER, EEG, SMNER, EES)."""


def _note(message: str) -> None:
    click.echo(message, err=True)


def _table(scores: dict[str, Any]) -> str:
    lines = [
        f"{'metric':<7} {'precision':>9} {'recall':>7} {'f1':>7} {'tp':>6} {'pred':>6} {'gold':>6}"
    ]
    for metric in METRIC_ORDER:
        if metric in scores:
            s = scores[metric]
            lines.append(
                f"{metric.upper():<7} {100 * s['precision']:>9.2f} {100 * s['recall']:>7.2f} "
                f"{100 * s['f1']:>7.2f} {s['tp']:>6} {s['n_pred']:>6} {s['n_gold']:>6}"
            )
    return "\n".join(lines)


def _read_predictions(path: Path) -> Any:
    try:
        return read_predictions(path)
    except PredictionError as exc:
        raise click.ClickException(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 text ({exc.reason})") from None


def _report_alignment(alignment: Any) -> None:
    summary = alignment.summary()
    _note(
        f"matched {summary['pred_by_span']} predicted entities by span, "
        f"{summary['pred_by_string']} by surface string; "
        f"{summary['pred_matching_no_gold']} match no gold entity"
    )
    if alignment.missing_posts:
        _note(
            f"warning: {len(alignment.missing_posts)} gold posts have no prediction line "
            f"(scored as predicting nothing), e.g. {alignment.missing_posts[0]}"
        )
    if alignment.extra_posts:
        _note(
            f"warning: {len(alignment.extra_posts)} predicted posts are not in the gold file "
            f"(ignored), e.g. {alignment.extra_posts[0]}"
        )


def _emit(scores: dict[str, Any], as_json: bool) -> None:
    click.echo(_table(scores))
    if as_json:
        click.echo(json.dumps(scores, sort_keys=False))


_gold_option = click.option(
    "--gold", "gold_path", required=True, type=EXISTING_FILE, help="CoNLL gold file."
)
_pred_option = click.option(
    "--pred", "pred_path", required=True, type=EXISTING_FILE, help="Result JSONL."
)
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object as the last line."
)


@eval_group.command("gmner")
@_gold_option
@xml_option("Folder of Pascal-VOC xml boxes (<IMGID>.xml).")
@_pred_option
@click.option(
    "--iou",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.5,
    show_default=True,
    help="IoU a predicted box (mask) needs with a gold one.",
)
@click.option(
    "--gold-masks",
    type=EXISTING_FILE,
    default=None,
    help="JSONL of gold masks (id + entities with mask) for SMNER/EES.",
)
@click.option(
    "--iou-sweep",
    "sweep_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write iou_sweep.png and iou_sweep.json (F1 at IoU 0.5..0.95) into this folder.",
)
@_json_option
def gmner_command(
    gold_path: Path,
    xml_dir: Path,
    pred_path: Path,
    iou: float,
    gold_masks: Path | None,
    sweep_dir: Path | None,
    as_json: bool,
) -> None:
    """Score GMNER, MNER and EEG (SMNER and EES with masks) of result JSONL against
    Twitter-GMNER CoNLL + xml gold."""
    try:
        posts = read_gmner(gold_path, xml_dir)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot read the gold: {exc}") from None
    predictions = _read_predictions(pred_path)
    masks = _read_predictions(gold_masks) if gold_masks is not None else None
    try:
        alignment = gmner.align(posts, predictions, masks)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _note(
        f"{len(posts)} gold posts, "
        f"{sum(len(p.entities) for p in posts)} gold entities "
        f"({sum(e.boxes is not None for p in posts for e in p.entities)} groundable)"
    )
    _report_alignment(alignment)
    if masks is not None and not alignment.masks:
        _note("warning: --gold-masks given but no prediction carries a 'mask': no SMNER/EES")
    scores: dict[str, Any] = gmner.score(alignment, iou)
    scores["iou"] = iou
    scores["matching"] = alignment.summary()
    if sweep_dir is not None:
        curve = gmner.sweep(alignment)
        title = f"{pred_path.name} vs {gold_path.name} ({len(posts)} posts)"
        scores["iou_sweep"] = write_sweep(curve, sweep_dir, title)
        _note(f"wrote {scores['iou_sweep']['png']} and {scores['iou_sweep']['json']}")
    _emit(scores, as_json)


@eval_group.command("mner")
@_gold_option
@_pred_option
@_json_option
def mner_command(gold_path: Path, pred_path: Path, as_json: bool) -> None:
    """Score span + type (MNER) of result JSONL against any CoNLL file (ids: IMGID lines, else
    the post's index in the file)."""
    try:
        posts = read_conll(gold_path)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot read the gold: {exc}") from None
    alignment = gmner.align_mner(posts, _read_predictions(pred_path))
    _note(f"{len(posts)} gold posts")
    _report_alignment(alignment)
    scores: dict[str, Any] = {"mner": gmner.score_mner(alignment)}
    scores["matching"] = alignment.summary()
    _emit(scores, as_json)
