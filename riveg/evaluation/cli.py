"""``riveg eval``: score predictions against gold annotations."""

from __future__ import annotations

import click


@click.group("eval")
def eval_group() -> None:
    """Score predictions the way the papers do (GMNER, MNER, EEG, SMNER, EES)."""
