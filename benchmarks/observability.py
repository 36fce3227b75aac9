"""What metrics and tracing cost: the pipeline's posts/s in distributed mode with tracing off and
on (same run, interleaved), and the per-call cost of the metric updates a stage call makes.

    python benchmarks/observability.py [--posts 20] [--repeats 2]

Distributed runs: `riveg up` (its processes serve metrics on their own ports in every run, as
`riveg up` always does) then `riveg batch --broker` over the first N tweets of Twitter-GMNER dev
with the sample image. Tracing on = `RIVEG_TRACING_EXPORTER=otlp` to an OTLP receiver in this
process, every post sampled. Metrics cannot be "off" in a process (the counters are always
updated), so their cost is measured directly: the updates one stage call makes (a counter, a
histogram, a gauge up and down), timed over many iterations, against the median stage call.
Writes benchmarks/results/observability.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import BROKER, base_env, posts, run_batch  # noqa: E402
from riveg.core.observability import post_span, tag_current_span  # noqa: E402
from riveg.core.stages import STAGES  # noqa: E402
from riveg.orchestration.launcher import free_port, port_open  # noqa: E402
from riveg.serving import metrics  # noqa: E402
from tests.support.otlp import OtlpReceiver  # noqa: E402
from tests.support.processes import (  # noqa: E402
    delete_job_records,
    delete_queues,
    spawn_up,
    stop_up,
)

RESULT_BACKEND = "redis://127.0.0.1:6379/14"  # a database of this benchmark's own


def metric_update_cost_us(iterations: int = 200_000) -> float:
    """Microseconds of the metric updates of one stage call."""
    requests = metrics.REQUESTS.labels("bench", "Bench", "OK")
    latency = metrics.LATENCY.labels("bench", "Bench")
    in_flight = metrics.IN_FLIGHT.labels("bench")

    def one_call() -> None:
        in_flight.inc()
        in_flight.dec()
        latency.observe(0.01)
        requests.inc()

    seconds = min(timeit.repeat(one_call, number=iterations, repeat=3))
    return round(seconds / iterations * 1e6, 3)


def tracing_off_cost_us(iterations: int = 100_000) -> float:
    """Microseconds per post of the tracing calls left in the code when tracing is off (the
    no-op submission span and a task's attribute tagging)."""

    def one_post() -> None:
        with post_span("riveg.submit", "job", "post"):
            tag_current_span(job_id="job", post_id="post", step="store")

    seconds = min(timeit.repeat(one_post, number=iterations, repeat=3))
    return round(seconds / iterations * 1e6, 3)


def distributed_run(work: Path, batch: list[dict], tracing: bool, otlp: OtlpReceiver) -> dict:
    """posts/s of one `riveg up` + `riveg batch --broker` run."""
    prefix = f"riveg-obs-{uuid.uuid4().hex[:6]}"
    extra = {"RIVEG_TRACING_EXPORTER": "otlp", "RIVEG_TRACING_ENDPOINT": otlp.endpoint} \
        if tracing else {}  # fmt: skip
    env = base_env(
        RIVEG_BROKER_URL=BROKER, RIVEG_BROKER_QUEUE_PREFIX=prefix,
        RIVEG_BROKER_RESULT_BACKEND=RESULT_BACKEND,
        RIVEG_STORE_KIND="s3", RIVEG_S3_ENDPOINT=f"127.0.0.1:{free_port()}",
        **{f"RIVEG_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}" for s in STAGES}, **extra,
    )  # fmt: skip
    spans_before = len(otlp.spans)
    process, _ = spawn_up(env, work / "up", concurrency=2)
    try:
        summary = run_batch(work / "batch", batch, env, ["--broker", BROKER, "--window", "16"])
    finally:
        stop_up(process)
        delete_queues(BROKER, prefix)
        delete_job_records(RESULT_BACKEND, prefix)
    time.sleep(6 if tracing else 0)  # the last batch of spans
    return {
        "tracing": tracing,
        "posts_per_s": summary["posts_per_s"],
        "done": summary["done"],
        "failed": summary["failed"],
        "spans": len(otlp.spans) - spans_before,
        "median_stage_ms": {k: v["median_ms"] for k, v in summary["stage_latency"].items()},
    }


def main() -> int:
    """Run, write the results, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/observability.json")
    args = parser.parse_args()
    if not (port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 6379)):
        raise SystemExit("needs RabbitMQ and Redis on loopback")
    batch, source = posts(args.posts)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, OtlpReceiver() as otlp:
        for repeat in range(args.repeats):
            for tracing in (False, True):  # interleaved: the machine's load weighs on both
                name = f"{'on' if tracing else 'off'}-{repeat}"
                print(f"run {name} ...", file=sys.stderr)
                runs.append(distributed_run(Path(tmp) / name, batch, tracing, otlp))
                print(f"  {runs[-1]['posts_per_s']} posts/s", file=sys.stderr)
    off = [r["posts_per_s"] for r in runs if not r["tracing"]]
    on = [r["posts_per_s"] for r in runs if r["tracing"]]
    stage_ms = [ms for r in runs for ms in r["median_stage_ms"].values()]
    cost_us = metric_update_cost_us()
    report = {
        "posts": args.posts, "texts": source, "cpus": os.cpu_count(), "runs": runs,
        "tracing_off_posts_per_s": round(statistics.mean(off), 3),
        "tracing_on_posts_per_s": round(statistics.mean(on), 3),
        "tracing_change_pct": round((statistics.mean(on) / statistics.mean(off) - 1) * 100, 1),
        "metric_updates_per_call_us": cost_us,
        "tracing_off_per_post_us": tracing_off_cost_us(),
        "median_stage_call_ms": round(statistics.median(stage_ms), 1),
        "command": f"python benchmarks/observability.py --posts {args.posts} "
                   f"--repeats {args.repeats}",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'run':<8} {'tracing':<8} {'posts/s':>8} {'spans':>6}")
    for run in runs:
        print(f"{'':<8} {run['tracing']!s:<8} {run['posts_per_s']:>8} {run['spans']:>6}")
    print(f"tracing off {report['tracing_off_posts_per_s']} posts/s, on "
          f"{report['tracing_on_posts_per_s']} ({report['tracing_change_pct']:+} %); metric "
          f"updates {cost_us} us per stage call (median stage step "
          f"{report['median_stage_call_ms']} ms)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
