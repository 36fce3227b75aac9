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
from click.utils import make_default_short_help

from riveg import __version__
from riveg.core.config import ConfigError
from riveg.orchestration.commands import analyze, batch, serve, worker
from riveg.orchestration.launcher import up
from riveg.serving.models_cli import models_group

LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": (
        "riveg.evaluation.cli:eval_group",
        "Score predictions the way the papers do (GMNER, MNER, EEG, SMNER, EES).",
    ),
    "gateway": (
        "riveg.gateway.cli:gateway",
        "The HTTP API: submit posts, get jobs and results (/v1; OpenAPI at /openapi.json).",
    ),
    "submit": (
        "riveg.gateway.cli:submit",
        "Submit a post to the gateway; prints its job (with --wait, when it ends).",
    ),
    "status": ("riveg.gateway.cli:status", "A job's status (and its result when done)."),
    "result": (
        "riveg.gateway.cli:result",
        "The result of a job (or of a post id): exit 1 when the job failed.",
    ),
    "llm": (
        "services.llm.cli:llm_group",
        "The LLM stage in this process: referring expressions, knowledge, image descriptions.",
    ),
    "mner": (
        "services.mner.cli:mner_group",
        "The PLIM-style MNER model: encoder + CRF over the post and LLM knowledge.",
    ),
    "ve": (
        "services.ve.cli:ve_group",
        "Visual entailment: groundability model training and evaluation.",
    ),
}
"""Command name -> (``module:attribute`` of a group imported only when it is used, the first
line of its help, shown by ``riveg --help`` without importing it; a test keeps them equal)."""


class LazyGroup(click.Group):
    """A group whose heavier subcommands are imported on first use."""

    def __init__(self, *args: object, lazy: dict[str, tuple[str, str]], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, _, attribute = self.lazy[cmd_name][0].partition(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; a configuration found unusable on the way (TLS files, credentials)
        ends it with one line, not a traceback."""
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(f"bad configuration: {exc}") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, with the lazy groups' summaries from the table (no import)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.lazy:
                rows.append((name, make_default_short_help(self.lazy[name][1], limit)))
            else:
                rows.append((name, self.commands[name].get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
