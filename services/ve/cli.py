"""``riveg ve``: train and score the VE groundability model on Twitter-GMNER labels."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from riveg.core.cli import EXISTING_FILE, F, xml_option
from services.ve.groundability import (
    WEIGHTS,
    Embedder,
    GroundabilityModel,
    features,
    labelled,
    scores,
    train,
)

_xml_option = xml_option("folder of the Pascal-VOC xml boxes")
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="one JSON object as the last line"
)


def _data_option(help_text: str) -> Callable[[F], F]:
    """The required ``--data`` option: an existing CoNLL file, as a Path."""
    return click.option("--data", "data", type=EXISTING_FILE, required=True, help=help_text)


def _echo_result(result: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    for key, value in result.items():
        click.echo(f"{key}: {json.dumps(value) if isinstance(value, dict) else value}")


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.group("ve")
def ve_group() -> None:
    """Visual entailment: groundability model training and evaluation."""


@ve_group.command("eval")
@_data_option("CoNLL file (Twitter-GMNER dev.txt, ...)")
@_xml_option
@click.option(
    "--weights",
    type=EXISTING_FILE,
    default=None,
    help="groundability .npz (default: the committed weights)",
)
@_json_option
def ve_eval(data: Path, xml_dir: Path, weights: Path | None, as_json: bool) -> None:
    """Score groundability of the gold entities of DATA (text side only: no images, detector
    evidence off): accuracy, precision, recall, F1 of "groundable" as fractions, with the
    majority-class and "every PER is groundable" baselines."""
    try:
        model = GroundabilityModel.load(weights or WEIGHTS)
        posts, gold = labelled(data, xml_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not len(gold):
        raise click.ClickException(f"{data} has no gold entities")
    _log(f"embedding {len(gold)} entities of {len(posts)} posts ...")
    started = time.perf_counter()
    rows = features(Embedder(), posts)
    predicted = model.probability(rows) >= model.threshold
    per_rule = np.array([e["type"] == "PER" for entities in posts for e in entities])
    result = {
        "data": str(data),
        "model": f"minilm-groundability@{(model.meta or {}).get('version', '1')}",
        **scores(predicted, gold),
        "per_rule": scores(per_rule, gold),
        "seconds": round(time.perf_counter() - started, 1),
    }
    _echo_result(result, as_json)


@ve_group.command("train")
@_data_option("CoNLL training file (Twitter-GMNER train.txt)")
@_xml_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="weights file (default: the committed services/ve/weights/groundability-1.npz)",
)
@_json_option
def ve_train(data: Path, xml_dir: Path, out: Path | None, as_json: bool) -> None:
    """Fit the groundability logistic regression on DATA (C by 5-fold cross-validation)."""
    try:
        posts, gold = labelled(data, xml_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    _log(f"embedding {len(gold)} entities of {len(posts)} posts ...")
    started = time.perf_counter()
    rows = features(Embedder(), posts)
    _log("fitting ...")
    model, cv = train(rows, gold)
    model.meta = {**(model.meta or {}), "data": data.name, "version": "1"}
    path = model.save(out or WEIGHTS)
    _echo_result(
        {
            "weights": str(path),
            "bytes": path.stat().st_size,
            "entities": len(gold),
            "C": model.meta["C"],
            "cv_accuracy": cv,
            "seconds": round(time.perf_counter() - started, 1),
        },
        as_json,
    )


if __name__ == "__main__":
    sys.exit(ve_group())
