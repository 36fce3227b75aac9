"""``riveg llm``: run the LLM stage's jobs in this process (expand, knowledge, describe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from riveg.core.cli import cli_settings, config_option
from riveg.core.errors import InvalidInput
from riveg.core.storage import open_store
from services.llm.backends import LlmRouter, referring_expression
from services.llm.describe import ImageDescriber

backend_option = click.option(
    "--backend",
    help="gemma, openai or replay (default: RIVEG_LLM_<JOB>_BACKEND, else RIVEG_LLM_BACKEND).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object, last line.")


def _settings(config_file: str | None) -> Any:
    return cli_settings(config_file)


def _router(settings: Any, job: str, backend: str | None) -> Any:
    """The configured backend of one job type, loaded, with the store's generation cache."""
    store = open_store(settings) if settings.llm.cache else None
    try:
        router = LlmRouter(settings, store, **{f"{job}_backend": backend})
        backend_obj = router.for_job(job)
        backend_obj.load()
    except Exception as exc:
        raise click.ClickException(f"cannot load the LLM backend: {exc}") from exc
    return backend_obj


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(f"the LLM backend failed: {type(exc).__name__}: {exc}")


@click.group("llm")
def llm_group() -> None:
    """The LLM stage in this process: referring expressions, knowledge, image descriptions."""


@llm_group.command("expand")
@click.option("--text", required=True, help="The post's text.")
@click.option("--entity", required=True, help="The entity's surface string.")
@click.option("--type", "kind", required=True, help="PER, LOC, ORG or MISC.")
@click.option("--knowledge", default="", help="Optional background for the prompt.")
@backend_option
@json_option
@config_option
def expand_command(
    text: str,
    entity: str,
    kind: str,
    knowledge: str,
    backend: str | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Print the referring expression ENTITY(TYPE)-expansion on one line."""
    if not text.strip() or not entity.strip():
        raise click.ClickException("--text and --entity must not be empty")
    settings = _settings(config_file)
    model = _router(settings, "expand", backend)
    try:
        [description] = model.expand(text, [{"text": entity, "type": kind}], knowledge)
    except Exception as exc:
        raise _fail(exc) from exc
    expression = referring_expression(entity, kind, description)
    if as_json:
        click.echo(json.dumps({"expression": expression, "model": model.model}))
    else:
        click.echo(expression)


def _description(settings: Any, image: str | None, image_id: str) -> Any:
    data = Path(image).read_bytes() if image else None
    try:
        return ImageDescriber(settings).describe(data, image_id)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(f"cannot describe the image: {exc}") from exc


@llm_group.command("knowledge")
@click.option("--text", required=True, help="The post's text.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="The post's image.")
@click.option("--image-id", default="", help="Dataset image id (released caption).")
@click.option("--image-description", default="", help="Use this description as given.")
@backend_option
@json_option
@config_option
def knowledge_command(
    text: str,
    image: str | None,
    image_id: str,
    image_description: str,
    backend: str | None,
    as_json: bool,
    config_file: str | None,
) -> None:
    """Print the auxiliary-knowledge paragraph of a post."""
    if not text.strip():
        raise click.ClickException("--text must not be empty")
    settings = _settings(config_file)
    description = image_description
    if not description and (image or image_id):
        description = _description(settings, image, image_id).text
    model = _router(settings, "knowledge", backend)
    try:
        paragraph = model.knowledge(text, description)
    except Exception as exc:
        raise _fail(exc) from exc
    if as_json:
        record = {"knowledge": paragraph, "image_description": description, "model": model.model}
        click.echo(json.dumps(record, ensure_ascii=False))
    else:
        click.echo(paragraph)


@llm_group.command("describe")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="The image.")
@click.option("--image-id", default="", help="Dataset image id (released caption).")
@json_option
@config_option
def describe_command(
    image: str | None, image_id: str, as_json: bool, config_file: str | None
) -> None:
    """Print a short description of an image (vision endpoint, caption, or detector)."""
    if not image and not image_id:
        raise click.ClickException("give --image or --image-id")
    settings = _settings(config_file)
    described = _description(settings, image, image_id)
    if as_json:
        click.echo(json.dumps(described.__dict__, ensure_ascii=False))
    else:
        click.echo(described.text)
