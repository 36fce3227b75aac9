"""`riveg up`'s supervision: a child that dies is restarted, after a wait that doubles while it
keeps dying soon after its start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from riveg.core.config import load_settings
from riveg.orchestration.launcher import Launcher


def test_a_child_that_keeps_dying_is_restarted_with_growing_waits(tmp_path: Path) -> None:
    launcher = Launcher(load_settings(), tmp_path, dict(os.environ))
    launcher.spawn("crash", ["sh", "-c", "echo started; exit 3"])
    launcher.spawn("steady", ["sleep", "30"])
    restarted_at = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 7.8:
            if "crash" in launcher.supervise():
                restarted_at.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        launcher.stop(grace=2)
    # Restarts 1 s, then 2 s, then 4 s after each death (the child dies at once).
    assert len(restarted_at) == 3, restarted_at
    waits = [b - a for a, b in zip([0.0, *restarted_at], restarted_at, strict=False)]
    assert [round(w) for w in waits] == [1, 2, 4], waits
    assert launcher.restarts == {"crash": 3, "steady": 0}
    assert (tmp_path / "crash.log").read_text().count("started") == 4
