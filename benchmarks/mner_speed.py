"""Inference throughput of an MNER model through the ``crf`` backend (raw text in, character
spans out), batched, without knowledge by default. Writes ``benchmarks/results/mner_speed.json``.

    python benchmarks/mner_speed.py [--model DIR] [--threads 2] [--knowledge]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped weights)")
    parser.add_argument("--dataset", default="twitter_gmner")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--knowledge", action="store_true", help="append the ChatGPT knowledge")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quantize", action="store_true", help="dynamic int8 encoder")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from riveg.core.config import load_settings
    from services.mner.backends import CrfMnerBackend
    from services.mner.data import load_split
    from services.mner.model import default_model_dir

    settings = load_settings(models_torch_threads=args.threads, mner_quantize=args.quantize)
    backend = CrfMnerBackend(settings)
    backend.model_dir = Path(args.model) if args.model else default_model_dir()
    backend.batch_size = args.batch_size
    backend.load()
    posts = load_split(args.dataset, "dev", with_knowledge=args.knowledge)
    texts = [p.text for p in posts]
    knowledge = [" ".join(p.knowledge) or None for p in posts] if args.knowledge else None
    rates, cpu_rates = [], []
    for _ in range(args.repeats):
        began, cpu_began = time.perf_counter(), time.process_time()
        backend.recognize(texts, knowledge)
        rates.append(len(texts) / (time.perf_counter() - began))
        cpu_rates.append(len(texts) / (time.process_time() - cpu_began))
    result = {
        "model": str(backend.model_dir),
        "dataset": args.dataset,
        "posts": len(texts),
        "knowledge": args.knowledge,
        "quantize": args.quantize,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "posts_per_s": round(max(rates), 1),
        "posts_per_s_runs": [round(r, 1) for r in rates],
        # posts per CPU-second of this process: wall-clock rates above depend on other load
        "posts_per_cpu_s": round(max(cpu_rates), 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = (
        "mner_speed" + ("_knowledge" if args.knowledge else "") + ("_int8" if args.quantize else "")
    )
    name += ".json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
