"""The fault suite's faults over a 1,000-post burst: one `riveg batch` of N posts against a
distributed deployment on a private RabbitMQ node, Redis and S3 server (as tests/test_faults.py
starts them), with every fault injected in turn while it runs.

    python benchmarks/soak.py [--posts 1000] [--window 32] [--concurrency 2]

Faults, each once results reach its mark (fractions of N): the LLM worker SIGKILLed (10%), the
LLM server SIGKILLed and restarted by `riveg up` (25%), RabbitMQ stopped for 5 s (40%), Redis
stopped for 5 s (55%), nanio killed for 5 s (70%); the first post is a poison post (a 4096x4096
image whose worker is SIGKILLed the first 3 times its step starts). Texts: Twitter-GMNER dev
(the sample post's text where absent) with the sample image.

Writes benchmarks/results/soak.json: posts done / failed / duplicated, results in the store,
the time each fault took to recover (its injection to the next result), steps and stage calls
done more than once, posts/s, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import posts as benchmark_posts  # noqa: E402
from tests.conftest import SAMPLE_IMAGE  # noqa: E402
from tests.support.faults import (  # noqa: E402
    Deployment,
    deployment,
    kill_on_start,
    run_with_faults,
    write_posts,
)
from tests.support.private import missing_servers  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "soak.json"
README = ROOT / "README.md"
POISON_KILLS = 3  # RIVEG_PIPELINE_MAX_STARTS: the 4th start refuses the post


def s3_outage(deploy: Deployment) -> None:
    """nanio killed, back after 5 s."""
    deploy.s3.kill()
    time.sleep(5)
    deploy.s3.start()


FAULTS = (
    (0.10, "worker-sigkill", lambda d: d.kill("worker-llm")),
    (0.25, "server-sigkill", lambda d: d.kill("serve-llm")),
    (0.40, "broker-restart", lambda d: d.rabbit.restart(down_s=5)),
    (0.55, "redis-restart", lambda d: d.redis.restart(down_s=5)),
    (0.70, "s3-restart", s3_outage),
)


def readme_table(report: dict) -> str:
    """The README's soak table."""
    recovered = ", ".join(f"{f['label']} {f['recovered_s']} s" for f in report["faults"])
    lines = [
        f"Soak (`{report['command']}`; texts: {report['texts']}; `benchmarks/results/soak.json`):",
        "",
        "| posts | done | failed | duplicated | results in store | steps done twice "
        "| stage calls repeated | posts/s | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {report['posts']} | {report['done']} | {report['failed']} | {report['duplicated']} "
        f"| {report['results_in_store']} | {report['repeated_steps']} "
        f"| {report['repeated_stage_calls']} | {report['posts_per_s']} | {report['wall_s']} s |",
        "",
        f"Failed: {'; '.join(report['errors']) or 'none'}. Time from each fault to the next "
        f"result: {recovered}. Restarts by `riveg up`: "
        + ", ".join(f"{k} {v}" for k, v in report["restarts"].items() if v)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def write_readme_table(report: dict) -> None:
    """Replace the README's soak table with this report's."""
    readme = README.read_text()
    start, end = "<!-- soak-table:start -->", "<!-- soak-table:end -->"
    before, rest = readme.split(start, 1)
    README.write_text(f"{before}{start}\n{readme_table(report)}{end}{rest.split(end, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--window", type=int, default=32, help="riveg batch --window")
    parser.add_argument("--concurrency", type=int, default=2, help="riveg up --concurrency")
    parser.add_argument("--table-only", action="store_true",
                        help="only rewrite the README's table from the last results")  # fmt: skip
    args = parser.parse_args()
    if args.table_only:
        write_readme_table(json.loads(RESULT.read_text()))
        return
    missing = missing_servers()
    if missing:
        sys.exit(f"soak: this machine lacks {missing}")
    source_posts, source = benchmark_posts(args.posts)
    texts = tuple(post["text"] for post in source_posts)
    with tempfile.TemporaryDirectory(prefix="riveg-soak-") as work:
        root = Path(work)
        posts = write_posts(root / "posts", "soak", args.posts, SAMPLE_IMAGE, True, texts)
        print(f"soak: starting the deployment ({args.posts} posts)", file=sys.stderr)
        with deployment(root / "deploy", concurrency=args.concurrency) as deploy:
            schedule = [(int(mark * args.posts), label, fault) for mark, label, fault in FAULTS]
            stop_poison = kill_on_start(deploy, "soak-0000", times=POISON_KILLS)
            try:
                run = run_with_faults(deploy, "soak", posts, schedule, window=args.window,
                                      timeout=4 * 3600)  # fmt: skip
            finally:
                poison_kills = stop_poison()
            restarts = deploy.ready.get("restarts", {})
    figures = run.figures()
    poison_line = next((line for line in run.lines if line.get("id") == "soak-0000"), {})
    report = {
        "command": f"python benchmarks/soak.py --posts {args.posts} --window {args.window} "
        f"--concurrency {args.concurrency}",
        "texts": source,
        **figures,
        "posts_per_s": round(run.posts / run.wall_s, 3),
        "batch_summary": run.summary,
        "faults": [
            {"label": label, "after_results": int(mark * args.posts),
             "recovered_s": run.recoveries.get(label)}
            for mark, label, _ in FAULTS
        ],
        "poison": {"kills": poison_kills, "error": poison_line.get("error")},
        "restarts": restarts,
        "exit_code": run.exit_code,
    }  # fmt: skip
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    write_readme_table(report)
    print(json.dumps(report))
    sys.exit(0 if run.duplicated == 0 and run.done + run.failed == run.posts else 1)


if __name__ == "__main__":
    main()
