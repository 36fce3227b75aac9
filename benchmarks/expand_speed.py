"""Entity expansion speed of the local Gemma backend: whole prompts against shared prefixes.

    python benchmarks/expand_speed.py [--posts 48] [--batch 16]

The first ``--posts`` Twitter-GMNER dev tweets with their gold entities, ``--batch`` posts per
generation (as the LLM server's batcher hands them over), the generation cache off. "whole" runs
every entity's whole prompt (left padding, up to ``max_new_tokens``, as before the prefix tree);
"served" is what the server runs: shared prefixes (the few-shot examples once per process, a
post's text once for its entities) and each sequence ending once its description is settled.
Reports seconds, posts/s and how many cleaned descriptions are identical. Writes
benchmarks/results/expand_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from riveg.core.config import load_settings  # noqa: E402
from riveg.data.conll import read_conll, shared_datasets_dir  # noqa: E402
from services.llm.backends import (  # noqa: E402
    NEWLINE_STOP,
    GemmaBackend,
    clean_description,
    create_backend,
)

RESULT = ROOT / "benchmarks" / "results" / "expand_speed.json"


def whole_prompts(gemma: GemmaBackend, batch: list[tuple[str, list[dict], str]]) -> list[str]:
    """Each entity's whole prompt, generated as before the prefix tree."""
    prompts = [p for text, entities, _ in batch for p in gemma.expand_prompts(text, entities)]
    generations = gemma.generate(prompts, gemma.settings.llm.max_new_tokens, NEWLINE_STOP)
    return [clean_description(g.text) for g in generations]


def served(gemma: GemmaBackend, batch: list[tuple[str, list[dict], str]]) -> list[str]:
    """What the server's batch method answers."""
    return [d for answer in gemma.expand_batch(batch) for d in answer]  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    dev = shared_datasets_dir() / "twitter_gmner" / "dev.txt"
    if not dev.is_file():
        raise SystemExit(f"{dev} is absent: this benchmark needs Twitter-GMNER dev")
    items = [(p.text, p.entities(), "") for p in read_conll(dev)[: args.posts]]
    gemma = create_backend("gemma", load_settings(llm_cache=False))
    gemma.load()
    report: dict = {
        "command": f"python benchmarks/expand_speed.py --posts {args.posts} --batch {args.batch}",
        "posts": len(items),
        "entities": sum(len(entities) for _, entities, _ in items),
        "posts_per_generation": args.batch,
    }
    outputs = {}
    for name, run in (("whole", whole_prompts), ("served", served)):
        started, descriptions = time.perf_counter(), []
        for start in range(0, len(items), args.batch):
            descriptions += run(gemma, items[start : start + args.batch])  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
        outputs[name] = descriptions
        report[name] = {"seconds": round(seconds, 2), "posts_per_s": round(len(items) / seconds, 3)}
        print(json.dumps({name: report[name]}), file=sys.stderr)
    report["identical_descriptions"] = sum(
        a == b for a, b in zip(outputs["whole"], outputs["served"], strict=True)
    )
    report["speedup"] = round(report["whole"]["seconds"] / report["served"]["seconds"], 2)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
