"""The ``riveg`` command line. Results go to stdout (``--json``: one JSON object, last line);
logs and progress bars go to stderr; the exit status is 0 only on success.

The pipeline commands live in :mod:`riveg.orchestration`; each stage's own commands
(``riveg llm``, ``riveg mner``, ``riveg ve``) live in its ``services/<stage>/cli.py`` and are
imported when invoked (click's lazy subcommands), so that ``riveg worker`` or ``riveg serve vg``
do not load every stage's models and libraries.
"""

from __future__ import annotations

import importlib
import sys

import click

from riveg import __version__
from riveg.orchestration.commands import analyze, batch, serve, worker
from riveg.orchestration.launcher import up
from riveg.serving.models_cli import models_group

LAZY_COMMANDS: dict[str, str] = {
    "eval": "riveg.evaluation.cli:eval_group",
    "llm": "services.llm.cli:llm_group",
    "mner": "services.mner.cli:mner_group",
    "ve": "services.ve.cli:ve_group",
}
"""Command name -> ``module:attribute`` of a group imported only when it is used."""


class LazyGroup(click.Group):
    """A group whose heavier subcommands are imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, _, attribute = self.lazy[cmd_name].partition(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="riveg")
def main() -> None:
    """RiVEG-serve: grounded multimodal NER on social-media posts."""


for command in (analyze, batch, serve, worker, up, models_group):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
