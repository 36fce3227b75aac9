"""``riveg models``: publish and list model versions in the configured model store.

    riveg models publish STAGE NAME@VERSION FOLDER --backend KEY [--json]
    riveg models list STAGE [--json]

The store is RIVEG_MODELS_STORE_PATH when set, else ``models/`` in the configured object store
(RIVEG_STORE_KIND, RIVEG_S3_*). A running server loads a published version with
``riveg.v1.ModelAdmin/Load`` or at start with ``RIVEG_<STAGE>_MODEL``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from riveg.core.cli import cli_settings, config_option
from riveg.core.stages import STAGES
from riveg.serving.modelstore import ModelStore, open_model_store, parse_model_ref


@click.group("models")
def models_group() -> None:
    """Model store: publish and list versions."""


def _store(config_file: str | None) -> ModelStore:
    return open_model_store(cli_settings(config_file))


@models_group.command()
@click.argument("stage", type=click.Choice(STAGES))
@click.argument("model")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", required=True, help="backend key that serves it (owl, sam, clip, ...)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object as the last line")
@config_option
def publish(
    stage: str, model: str, folder: Path, backend: str, as_json: bool, config_file: str | None
) -> None:
    """Upload FOLDER as STAGE model NAME@VERSION (files first, manifest last)."""
    try:
        ref = parse_model_ref(model)
        key = _store(config_file).publish(stage, ref, folder, backend)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    result = {"stage": stage, "model": str(ref), "backend": backend, "key": key}
    click.echo(json.dumps(result) if as_json else f"published {stage}/{ref} at {key}")


@models_group.command("list")
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--json", "as_json", is_flag=True, help="one JSON object as the last line")
@config_option
def list_models(stage: str, as_json: bool, config_file: str | None) -> None:
    """Versions of STAGE in the store."""
    rows = [{"model": str(m.ref), "backend": m.backend} for m in _store(config_file).list(stage)]
    if as_json:
        click.echo(json.dumps({"stage": stage, "models": rows}))
    else:
        for row in rows:
            click.echo(f"{row['model']}\t{row['backend']}")
