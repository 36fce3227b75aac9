"""Pipeline speed: `riveg analyze` wall time (first and warm), per-stage latency, and throughput
in posts/s for N posts embedded and distributed (`riveg up` on this machine).

    python benchmarks/pipeline.py [--posts 50] [--modes embedded,distributed]

Posts are the first N tweets of Twitter-GMNER dev (../shared/datasets; the sample post's text
otherwise), each with the bundled sample image (tweet images are not available here). Writes
benchmarks/results/pipeline.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from riveg.core.stages import STAGES  # noqa: E402
from riveg.data.conll import read_conll, shared_datasets_dir  # noqa: E402
from riveg.orchestration.launcher import port_open  # noqa: E402
from riveg.sample import SAMPLE_IMAGE, SAMPLE_TEXT  # noqa: E402
from tests.support.processes import (  # noqa: E402
    delete_job_records,
    delete_queues,
    free_port,
    spawn_up,
    stop_up,
)

RIVEG = str(Path(sys.executable).parent / "riveg")
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
RESULT_BACKEND = "redis://127.0.0.1:6379/10"  # a database of this benchmark's own


def base_env(**extra: str) -> dict[str, str]:
    """This environment without RIVEG_* settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    env.update(extra)
    return env


def posts(count: int) -> tuple[list[dict], str]:
    """count posts (id, text, image) and where their texts come from."""
    dev = shared_datasets_dir() / "twitter_gmner" / "dev.txt"
    if dev.is_file():
        texts = [(p.id, p.text) for p in read_conll(dev)[:count]]
        source = "Twitter-GMNER dev"
    else:
        print(f"{dev} is absent: using the sample post's text", file=sys.stderr)
        texts = [(f"sample-{i}", SAMPLE_TEXT) for i in range(count)]
        source = "sample text"
    return [{"id": i, "text": t, "image": SAMPLE_IMAGE.name} for i, t in texts], source


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run a command; its wall time and stdout (RuntimeError with stderr on failure)."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{argv[:2]} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def analyze_wall_times(work: Path) -> dict[str, float]:
    """`riveg analyze` on the sample: first run (empty cache: GGUF conversion) and warm run."""
    env = base_env(RIVEG_MODELS_CACHE_DIR=str(work / "cache"), RIVEG_STORE_PATH=str(work / "store"))
    argv = [RIVEG, "analyze", "--text", SAMPLE_TEXT, "--image", str(SAMPLE_IMAGE), "--json"]
    first, _ = timed(argv, env)
    warm, _ = timed(argv, env)
    return {"first_s": round(first, 2), "warm_s": round(warm, 2)}


def run_batch(work: Path, batch: list[dict], env: dict[str, str], extra: list[str]) -> dict:
    """`riveg batch` over the posts; its summary plus per-stage latency from the results."""
    work.mkdir(parents=True, exist_ok=True)
    posts_file = work / "posts.jsonl"
    posts_file.write_text("".join(json.dumps(p) + "\n" for p in batch))
    out = work / "out.jsonl"
    wall, stdout = timed([RIVEG, "batch", str(posts_file), "--images", str(SAMPLE_IMAGE.parent),
                          "--out", str(out), "--json", *extra], env)  # fmt: skip
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.pop("out", None)  # a temporary path
    results = [json.loads(line) for line in out.read_text().splitlines()]
    stages: dict[str, list[float]] = {}
    for result in results:
        for stage, ms in result.get("timings_ms", {}).items():
            stages.setdefault(stage, []).append(ms)
    latency = {
        stage: {"median_ms": round(statistics.median(v), 1),
                "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 1)}
        for stage, v in stages.items()
    }  # fmt: skip
    entities = sum(len(r.get("entities", [])) for r in results)
    errors = {r["id"]: r["error"] for r in results if "error" in r}
    return {**summary, "command_wall_s": round(wall, 2), "entities": entities,
            "errors": errors, "stage_latency": latency}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=50)
    parser.add_argument("--modes", default="embedded,distributed")
    parser.add_argument("--concurrency", type=int, default=16, help="threads per worker")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pipeline.json")
    args = parser.parse_args()
    batch, source = posts(args.posts)
    report: dict = {"posts": len(batch), "texts": source, "machine": f"{os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report["analyze"] = analyze_wall_times(work / "analyze")
        print(f"analyze: {report['analyze']}", file=sys.stderr)
        if "embedded" in args.modes:
            env = base_env(RIVEG_STORE_PATH=str(work / "store"))
            report["embedded"] = run_batch(work / "embedded", batch, env, [])
            print(f"embedded: {report['embedded']['posts_per_s']} posts/s", file=sys.stderr)
        if "distributed" in args.modes:
            if not (port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 6379)):
                raise SystemExit("distributed mode needs RabbitMQ and Redis on loopback")
            prefix = f"riveg-bench-{uuid.uuid4().hex[:6]}"
            env = base_env(
                RIVEG_BROKER_URL=BROKER,
                RIVEG_BROKER_QUEUE_PREFIX=prefix,
                RIVEG_BROKER_RESULT_BACKEND=RESULT_BACKEND,
                RIVEG_STORE_KIND="s3", RIVEG_S3_ENDPOINT=f"127.0.0.1:{free_port()}",
                **{f"RIVEG_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}"
                   for s in STAGES},
            )  # fmt: skip
            process, ready = spawn_up(env, work / "up", concurrency=args.concurrency)
            try:
                report["distributed"] = run_batch(
                    work / "distributed", batch, env, ["--broker", BROKER, "--window", "16"]
                )
                report["distributed"]["startup_s"] = ready["startup_s"]
            finally:
                stop_up(process)
                delete_queues(BROKER, prefix)
                delete_job_records(RESULT_BACKEND, prefix)
            print(f"distributed: {report['distributed']['posts_per_s']} posts/s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
