"""What every ``riveg`` command shares: the ``--config`` option and settings built from flags,
with logging configured from them and a one-line error for a bad configuration."""

from __future__ import annotations

from typing import Any

import click

from riveg.core.config import Settings, load_settings
from riveg.core.logging import configure_logging

config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file."
)


def cli_settings(config_file: str | None, **overrides: Any) -> Settings:
    """Settings for a command (flags given as flat overrides, None = not given), with logging
    configured from them."""
    try:
        settings = load_settings(config_file, **overrides)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"bad configuration: {exc}") from exc
    configure_logging(settings.log.level, settings.log.format)
    return settings
