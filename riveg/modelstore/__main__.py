"""Publish and list model versions in the configured model store.

    python -m riveg.modelstore publish STAGE NAME@VERSION FOLDER --backend KEY [--json]
    python -m riveg.modelstore list STAGE [--json]

The store is RIVEG_MODEL_STORE_PATH when set, else ``models/`` in the configured object store
(RIVEG_STORE, RIVEG_S3_*). A running server loads a published version with
``riveg.v1.ModelAdmin/Load`` or at start with ``RIVEG_<STAGE>_MODEL``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from riveg import STAGES


@click.group()
def cli() -> None:
    """Model store: publish and list versions."""


def _store():  # type: ignore[no-untyped-def]
    from riveg.common.config import load_settings
    from riveg.modelstore import open_model_store

    return open_model_store(load_settings())


@cli.command()
@click.argument("stage", type=click.Choice(STAGES))
@click.argument("model")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", required=True, help="backend key that serves it (owl, sam, clip, ...)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object as the last line")
def publish(stage: str, model: str, folder: Path, backend: str, as_json: bool) -> None:
    """Upload FOLDER as STAGE model NAME@VERSION (files first, manifest last)."""
    from riveg.modelstore import parse_model_ref

    try:
        ref = parse_model_ref(model)
        key = _store().publish(stage, ref, folder, backend)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    result = {"stage": stage, "model": str(ref), "backend": backend, "key": key}
    click.echo(json.dumps(result) if as_json else f"published {stage}/{ref} at {key}")


@cli.command("list")
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--json", "as_json", is_flag=True, help="one JSON object as the last line")
def list_models(stage: str, as_json: bool) -> None:
    """Versions of STAGE in the store."""
    rows = [{"model": str(m.ref), "backend": m.backend} for m in _store().list(stage)]
    if as_json:
        click.echo(json.dumps({"stage": stage, "models": rows}))
    else:
        for row in rows:
            click.echo(f"{row['model']}\t{row['backend']}")


if __name__ == "__main__":
    sys.exit(cli())
