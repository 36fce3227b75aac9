"""The ``riveg`` command line. Results go to stdout (``--json``: one JSON object, last line);
logs and progress bars go to stderr; the exit status is 0 only on success.

The pipeline commands live in :mod:`riveg.orchestration`; each stage's own commands
(``riveg llm``, ``riveg mner``, ``riveg ve``) live in its ``services/<stage>/cli.py``.
"""

from __future__ import annotations

import sys

import click

from riveg import __version__
from riveg.evaluation.cli import eval_group
from riveg.orchestration.commands import analyze, batch, serve, worker
from riveg.orchestration.launcher import up
from riveg.serving.models_cli import models_group
from services.llm.cli import llm_group
from services.mner.cli import mner_group
from services.ve.cli import ve_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="riveg")
def main() -> None:
    """RiVEG-serve: grounded multimodal NER on social-media posts."""


for command in (
    analyze, batch, serve, worker, up, eval_group, models_group, llm_group, mner_group, ve_group
):  # fmt: skip
    main.add_command(command)


if __name__ == "__main__":
    sys.exit(main())
