"""What ``riveg`` commands share: the ``--config`` option and settings built from flags, with
logging configured from them and a one-line error for a bad configuration; the click types of
existing files and folders, and the ``--xml`` option of the Twitter-GMNER boxes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from riveg.core.config import Settings, load_settings
from riveg.core.logging import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file."
)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def xml_option(help_text: str) -> Callable[[F], F]:
    """The required ``--xml`` option (parameter ``xml_dir``, a Path): the existing folder of
    Twitter-GMNER's Pascal-VOC xml boxes."""
    return click.option("--xml", "xml_dir", required=True, type=EXISTING_DIR, help=help_text)


def cli_settings(config_file: str | None, **overrides: Any) -> Settings:
    """Settings for a command (flags given as flat overrides, None = not given), with logging
    configured from them."""
    try:
        settings = load_settings(config_file, **overrides)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"bad configuration: {exc}") from exc
    configure_logging(settings.log.level, settings.log.format)
    return settings
