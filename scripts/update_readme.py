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
    path = RESULTS / "pipeline.json"
    if not path.is_file():
        return "_Not measured yet: run `python benchmarks/pipeline.py`._"
    report = json.loads(path.read_text())
    rows = [
        "| measure | embedded | distributed |",
        "| --- | --- | --- |",
        f"| `riveg analyze` on the sample, first run (GGUF conversion included) | "
        f"{report['analyze']['first_s']} s | |",
        f"| `riveg analyze` on the sample, warm run (process start and model loading included) | "
        f"{report['analyze']['warm_s']} s | |",
    ]
    modes = [report.get("embedded", {}), report.get("distributed", {})]
    rows.append(
        f"| throughput, {report['posts']} posts | "
        + " | ".join(f"{m.get('posts_per_s', '-')} posts/s" for m in modes)
        + " |"
    )
    rows.append("| failed posts | " + " | ".join(str(m.get("failed", "-")) for m in modes) + " |")
    stages = [
        s
        for s in STEPS
        if any(s in m.get("stage_latency", {}) for m in modes)
    ]
    for stage in stages:
        cells = []
        for mode in modes:
            lat = mode.get("stage_latency", {}).get(stage)
            cells.append(f"{lat['median_ms']} ms (p90 {lat['p90_ms']})" if lat else "-")
        rows.append(f"| stage `{stage}` latency, median | " + " | ".join(cells) + " |")
    if "startup_s" in modes[1]:
        rows.append(f"| `riveg up` start-up (12 processes) | | {modes[1]['startup_s']} s |")
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
