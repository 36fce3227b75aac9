"""The ``riveg`` command line. Results go to stdout (``--json``: one JSON object, last line);
logs and progress bars go to stderr; the exit status is 0 only on success.

Heavy imports happen inside the commands so that ``riveg --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from riveg import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="riveg")
def main() -> None:
    """RiVEG-serve: grounded multimodal NER on social-media posts."""


# Commands of other modules are registered here.
from riveg.evaluation.cli import eval_group  # noqa: E402
from riveg.llm.cli import llm_group  # noqa: E402
from riveg.mner.cli import mner_group  # noqa: E402
from riveg.orchestration.commands import analyze, batch, serve, worker  # noqa: E402
from riveg.orchestration.launcher import up  # noqa: E402
from riveg.ve.cli import ve_group  # noqa: E402

for command in (analyze, batch, serve, worker, up, eval_group, llm_group, mner_group, ve_group):
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
