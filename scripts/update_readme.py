"""Regenerate the README's generated sections from the code and the committed results.

    python scripts/update_readme.py          # rewrite README.md
    python scripts/update_readme.py --check  # exit 1 when README.md is out of date

Sections sit between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from riveg.orchestration.celery_app import STEPS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_section() -> str:
    return _load(ROOT / "scripts" / "config_table.py", "config_table").config_table()


def pipeline_section() -> str:
    """The pipeline table; with ``pipeline_before.json`` (the run before the batching work),
    its figures in two more columns."""
    path = RESULTS / "pipeline.json"
    if not path.is_file():
        return "_Not measured yet: run `python benchmarks/pipeline.py`._"
    reports = [json.loads(path.read_text())]
    before = RESULTS / "pipeline_before.json"
    if before.is_file():
        reports.append(json.loads(before.read_text()))
    modes = [r.get(m, {}) for r in reports for m in ("embedded", "distributed")]
    header = "| measure | embedded | distributed |"
    if len(reports) > 1:
        header += " embedded before | distributed before |"
    rows = [header, "| --- |" + " --- |" * len(modes)]
    for key, label in (
        ("first_s", "`riveg analyze` on the sample, first run (GGUF conversion included)"),
        ("warm_s", "`riveg analyze` on the sample, warm run (process start and model loading "
                   "included)"),
    ):  # fmt: skip
        rows.append(
            f"| {label} | " + " | ".join(f"{r['analyze'][key]} s | " for r in reports) + " |"
        )
    rows.append(
        f"| throughput, {reports[0]['posts']} posts | "
        + " | ".join(f"{m.get('posts_per_s', '-')} posts/s" for m in modes)
        + " |"
    )
    rows.append("| failed posts | " + " | ".join(str(m.get("failed", "-")) for m in modes) + " |")
    stages = [s for s in STEPS if any(s in m.get("stage_latency", {}) for m in modes)]
    for stage in stages:
        cells = []
        for mode in modes:
            lat = mode.get("stage_latency", {}).get(stage)
            cells.append(f"{lat['median_ms']} ms (p90 {lat['p90_ms']})" if lat else "-")
        rows.append(f"| stage `{stage}` latency, median | " + " | ".join(cells) + " |")
    startups = [m.get("startup_s") for m in modes[1::2]]
    if any(startups):
        rows.append(
            "| `riveg up` start-up (12 processes) | "
            + " | ".join(f" | {s} s" if s else " | -" for s in startups)
            + " |"
        )
    return "\n".join(rows)


def mner_section() -> str:
    script = ROOT / "benchmarks" / "mner_benchmark.py"
    if not script.is_file():
        return "_No MNER benchmark yet._"
    return _load(script, "mner_benchmark").table().strip()


SECTIONS: dict[str, Callable[[], str]] = {
    "config-table": config_section,
    "pipeline-table": pipeline_section,
    "mner-table": mner_section,
}


def render(text: str) -> str:
    """README text with every generated section replaced."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        match = pattern.search(text)
        if match:
            body = f"{match.group(1)}{make()}\n{match.group(2)}"
            text = text[: match.start()] + body + text[match.end() :]
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    current = README.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
