"""Gateway speed: the accept path of `POST /v1/posts` under a loopback load generator, end-to-end
results/s through `riveg gateway` in distributed mode, and the time from submission to the signed
callback of the sample post (embedded and distributed).

    python benchmarks/gateway.py [--parts accept,distributed,embedded] [--duration 15]
        [--concurrency 1,8] [--images same,unique] [--posts 30] [--repeats 5]

1. accept: `riveg gateway` with a broker (RabbitMQ on loopback) but no workers, an S3 store
   (nanio on a free port) and a huge RIVEG_GATEWAY_MAX_BACKLOG: every post only queues, so a
   request's latency is the accept path (JSON validation, base64 decoding and the image header
   check, the image stored in S3 by its SHA-256, the Redis claim and job record, the Celery chain
   published on the broker). Threads with one httpx connection each post distinct ids for
   `--duration` seconds (at most `--max-requests`) at each concurrency. `same`: every post has
   the sample image, stored once (content-addressed; later posts only find it: one S3 HEAD);
   `unique`: the sample with a per-request trailer after the JPEG end, so each post stores a new
   object (S3 HEAD and PUT).
2. distributed: `riveg up` (stage servers, Celery workers, nanio) and a `riveg gateway` with the
   same settings; `--posts` posts (Twitter-GMNER dev texts, the sample image) submitted through
   `POST /v1/posts` and polled until done: results/s and per-post latency (submitted_at to
   finished_at of the job).
3. callback: the sample post with a `callback_url` on a loopback receiver; the time from the
   POST to the callback's arrival (signature checked), `--repeats` times one after another, in
   distributed mode (part 2's deployment) and in embedded mode (`riveg gateway` without a broker:
   the first post after loading, then warm ones). The repeats post the same text, so their
   LLM expansion comes from the generation cache (RIVEG_LLM_CACHE): the first try is the
   uncached one.

Uses the machine's RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379, database 13) with queue
prefixes of its own, deleted at the end. Writes benchmarks/results/gateway.json and gateway.md
and prints the tables; progress on stderr.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import itertools
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import redis
from kombu import Connection

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from riveg.core.stages import QUEUES, STAGES  # noqa: E402
from riveg.data.conll import read_conll, shared_datasets_dir  # noqa: E402
from riveg.gateway.client import FINAL, GatewayClient  # noqa: E402
from riveg.orchestration.launcher import port_open  # noqa: E402
from riveg.orchestration.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify  # noqa: E402
from riveg.sample import SAMPLE_IMAGE, SAMPLE_TEXT  # noqa: E402
from tests.support.processes import (  # noqa: E402
    console_script,
    delete_job_records,
    delete_queues,
    free_port,
    spawn_up,
    stop_up,
    wait_port,
)

RIVEG = console_script("riveg")
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of this benchmark's own
S3_KEYS = {
    "RIVEG_S3_ACCESS_KEY": "benchkey",
    "RIVEG_S3_SECRET_KEY": "bench-secret-7f3a",
    "RIVEG_S3_BUCKET": "riveg-bench",
}
CALLBACK_SECRET = "bench-callback-secret-91c2"
JSON = {"Content-Type": "application/json"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def base_env(**extra: str) -> dict[str, str]:
    """This environment without RIVEG_* settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    env.update(extra)
    return env


def texts(count: int) -> tuple[list[str], str]:
    """count post texts and where they come from."""
    dev = shared_datasets_dir() / "twitter_gmner" / "dev.txt"
    if dev.is_file():
        return [p.text for p in read_conll(dev)[:count]], "Twitter-GMNER dev"
    say(f"{dev} is absent: using the sample post's text")
    return [SAMPLE_TEXT] * count, "sample text"


def pct(values: list[float], q: float) -> float | None:
    """The nearest-rank q-quantile (0 < q <= 1) of values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def parse_time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def log_problems(log: Path, limit: int = 8) -> dict[str, Any]:
    """Lines of a gateway log at level warning or above (JSON lines), or tracebacks."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    bad = []
    for line in lines:
        try:
            level = str(json.loads(line).get("level", "")).lower()
        except (ValueError, AttributeError):
            level = "error" if ("Traceback" in line or "ERROR" in line) else ""
        if level in ("warning", "error", "critical", "exception"):
            bad.append(line[:600])
    return {"lines": len(lines), "warnings_or_errors": len(bad), "first": bad[:limit]}


@contextmanager
def gateway(env: dict[str, str], log: Path, timeout: float = 600.0) -> Iterator[dict[str, Any]]:
    """`riveg gateway` on a free port until /readyz answers 200; stopped (SIGTERM) on exit."""
    port = free_port()
    argv = [RIVEG, "gateway", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"riveg gateway exited {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"riveg gateway not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        ready_s = round(time.perf_counter() - started, 2)
        say(f"gateway ready at {url} after {ready_s} s")
        yield {"url": url, "ready_s": ready_s, "log": log, "argv": argv, "process": process}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            say("the gateway did not stop within 60 s of SIGTERM: killed")
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def nanio(data_dir: Path) -> Iterator[str]:
    """A nanio S3 server on a free loopback port; yields its endpoint."""
    port = free_port()
    env = {
        **os.environ,
        "NANIO_ACCESS_KEY": S3_KEYS["RIVEG_S3_ACCESS_KEY"],
        "NANIO_SECRET_KEY": S3_KEYS["RIVEG_S3_SECRET_KEY"],
    }
    process = subprocess.Popen(
        [
            console_script("nanio"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def delete_task_results(redis_url: str) -> int:
    """Delete Celery's task results (celery-task-meta-*) in the benchmark's own Redis database,
    which delete_job_records leaves behind; how many."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="celery-task-meta-*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


# -- 1. the accept path ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    url: str,
    body: Callable[[int], bytes],
    concurrency: int,
    duration: float,
    max_requests: int,
    pid: int | None = None,
) -> dict[str, Any]:
    """POST body(n) for n = 0, 1, ... to /v1/posts from `concurrency` threads (one connection
    each) until `duration` seconds or `max_requests`; latency and rate by outcome. Meanwhile a
    probe GETs /healthz every 0.1 s (its latency shows whether the server answers other requests
    while posts are being taken), and the CPU time of the gateway process `pid` is read."""
    counter = itertools.count()
    records: list[tuple[float, float, int | str]] = []
    refusals: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def worker() -> None:
        mine: list[tuple[float, float, int | str]] = []
        with httpx.Client(base_url=url, timeout=30.0, headers=JSON) as http:
            while True:
                n = next(counter)
                if n >= max_requests or time.perf_counter() >= deadline:
                    break
                content = body(n)
                started = time.perf_counter()
                status: int | str
                try:
                    response = http.post("/v1/posts", content=content)
                    status = response.status_code
                    if status != 202 and len(refusals) < 10:
                        refusals.append(
                            {
                                "n": n,
                                "status": status,
                                "body": response.text[:400],
                                "headers": dict(response.headers),
                            }
                        )
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    if len(refusals) < 10:
                        refusals.append({"n": n, "status": status, "error": str(exc)[:400]})
                mine.append((started, time.perf_counter(), status))
        with lock:
            records.extend(mine)

    health: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            while not stop.wait(0.1):
                started = time.perf_counter()
                try:
                    http.get("/healthz")
                except httpx.HTTPError:
                    continue
                health.append(time.perf_counter() - started)

    cpu_before = cpu_seconds(pid) if pid else 0.0
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    prober = threading.Thread(target=probe)
    prober.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    prober.join()
    cpu = cpu_seconds(pid) - cpu_before if pid else None
    wall = max(end for _, end, _ in records) - min(start for start, _, _ in records)
    latency = [end - start for start, end, _ in records]
    accepted = [end - start for start, end, status in records if status == 202]
    statuses = Counter(str(status) for _, _, status in records)
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "wall_s": round(wall, 2),
        "statuses": dict(sorted(statuses.items())),
        "accepted": statuses.get("202", 0),
        "submissions_per_s": round(statuses.get("202", 0) / wall, 1),
        "latency_ms": {
            "p50": ms(pct(latency, 0.5)),
            "p90": ms(pct(latency, 0.9)),
            "p99": ms(pct(latency, 0.99)),
            "max": ms(max(latency)),
        },
        "accepted_latency_ms": {"p50": ms(pct(accepted, 0.5)), "p99": ms(pct(accepted, 0.99))},
        "healthz_ms": {"p50": ms(pct(health, 0.5)), "max": ms(max(health, default=0))},
        "gateway_cpu": None
        if cpu is None
        else {
            "cpu_s": round(cpu, 2),
            "busy": round(cpu / wall, 2),
            "cpu_ms_per_request": round(1000 * cpu / len(records), 2),
        },
        "refusals": refusals,
    }


def queued_messages(prefix: str) -> int:
    """Messages waiting in the prefix's stage queues on the broker."""
    total = 0
    with Connection(BROKER) as connection:
        channel = connection.channel()
        for queue in QUEUES:
            try:
                total += channel.queue_declare(queue=f"{prefix}.{queue}", passive=True)[1]
            except Exception:  # never declared: the broker closes the channel; open another
                channel = connection.channel()
    return total


def accept_part(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    prefix = f"riveg-bench-{uuid.uuid4().hex[:8]}"
    post_texts, _ = texts(50)
    image = SAMPLE_IMAGE.read_bytes()
    same_b64 = base64.b64encode(image).decode()
    part: dict[str, Any] = {"prefix": prefix, "runs": []}
    report["accept"] = part
    try:
        with nanio(work / "s3-accept") as endpoint:
            env = base_env(
                RIVEG_BROKER_URL=BROKER,
                RIVEG_BROKER_QUEUE_PREFIX=prefix,
                RIVEG_BROKER_RESULT_BACKEND=REDIS_URL,
                RIVEG_STORE_KIND="s3",
                RIVEG_S3_ENDPOINT=endpoint,
                RIVEG_GATEWAY_MAX_BACKLOG=str(10**9),
                RIVEG_LOG_FORMAT="json",
                **S3_KEYS,
            )
            with gateway(env, work / "gateway-accept.log") as gw:
                part["gateway_ready_s"] = gw["ready_s"]
                part["gateway_command"] = shlex.join(gw["argv"][1:])
                total_accepted = 0
                for mode in args.images.split(","):
                    for concurrency in map(int, args.concurrency.split(",")):
                        run = f"{mode}-c{concurrency}-{uuid.uuid4().hex[:4]}"

                        def body(n: int, run: str = run, mode: str = mode) -> bytes:
                            if mode == "same":
                                b64 = same_b64
                            else:  # bytes after the JPEG's end: a new object, the same picture
                                b64 = base64.b64encode(image + f"{run}-{n}".encode()).decode()
                            text = post_texts[n % len(post_texts)]
                            post = {"id": f"{run}-{n}", "text": text, "image_b64": b64}
                            return json.dumps(post).encode()

                        warm = load(gw["url"], lambda n, r=run: body(n, f"warm-{r}"), 1, 30, 10)
                        total_accepted += warm["accepted"]
                        say(f"accept {mode} c={concurrency}: {args.duration} s ...")
                        result = load(
                            gw["url"],
                            body,
                            concurrency,
                            args.duration,
                            args.max_requests,
                            gw["process"].pid,
                        )
                        total_accepted += result["accepted"]
                        result["image"] = mode
                        result["warmup_statuses"] = warm["statuses"]
                        part["runs"].append(result)
                        say(
                            f"  {result['submissions_per_s']} accepted/s, p50 "
                            f"{result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']}"
                            f" ms, statuses {result['statuses']}, gateway CPU "
                            f"{result['gateway_cpu']}, /healthz {result['healthz_ms']}"
                        )
                client = redis.Redis.from_url(REDIS_URL)
                try:
                    active = int(client.scard(f"riveg-jobs:{prefix}:active"))
                finally:
                    client.close()
                part["check"] = {
                    "accepted_total": total_accepted,
                    "active_job_records": active,
                    "queued_messages": queued_messages(prefix),
                }
                say(f"accept check: {part['check']}")
            part["gateway_log"] = log_problems(work / "gateway-accept.log")
    finally:
        delete_queues(BROKER, prefix)
        delete_job_records(REDIS_URL, prefix)


# -- 3. callbacks ---------------------------------------------------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """Loopback callback receiver: records each POST (arrival time, headers, body)."""

    posts: ClassVar[list[tuple[float, str, dict[str, str], bytes]]] = []
    arrived = threading.Condition()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        at = time.time()
        self.send_response(204)
        self.end_headers()
        with Receiver.arrived:
            Receiver.posts.append((at, self.path, dict(self.headers), body))
            Receiver.arrived.notify_all()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def callbacks(url: str, hook: str, label: str, repeats: int, timeout: float = 300.0) -> dict:
    """Submit the sample post with a callback `repeats` times, one after another; the time from
    the POST to the callback, and its parts."""
    image = base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    tries = []
    for n in range(repeats):
        path = f"/hook/{label}-{n}-{uuid.uuid4().hex[:6]}"
        body = {
            "id": f"cb-{label}-{n}-{uuid.uuid4().hex[:6]}",
            "text": SAMPLE_TEXT,
            "image_b64": image,
            "callback_url": f"{hook}{path}",
        }
        sent = time.time()
        response = httpx.post(f"{url}/v1/posts", json=body, timeout=60)
        accepted = time.time()
        entry: dict[str, Any] = {"status": response.status_code}
        if response.status_code != 202:
            entry["body"] = response.text[:400]
            tries.append(entry)
            continue
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + timeout
        got = None
        with Receiver.arrived:
            while got is None and time.monotonic() < deadline:
                got = next((p for p in Receiver.posts if p[1] == path), None)
                if got is None:
                    Receiver.arrived.wait(timeout=1.0)
        if got is None:
            entry["error"] = f"no callback within {timeout:.0f} s"
            tries.append(entry)
            continue
        at, _, headers, payload = got
        document = json.loads(payload)
        signed = verify(
            CALLBACK_SECRET,
            headers.get(TIMESTAMP_HEADER, ""),
            payload,
            headers.get(SIGNATURE_HEADER, ""),
        )
        finished = parse_time(document["finished_at"]) if document.get("finished_at") else None
        submitted = parse_time(document["submitted_at"]) if document.get("submitted_at") else None
        entry.update(
            job_status=document.get("status"),
            job_id_matches=document.get("job_id") == job_id,
            signature_ok=signed,
            entities=len((document.get("result") or {}).get("entities", [])),
            step_ms=(document.get("result") or {}).get("timings_ms"),
            submission_to_callback_s=round(at - sent, 3),
            accept_s=round(accepted - sent, 3),
            job_s=round(finished - submitted, 3) if finished and submitted else None,
            finished_to_callback_s=round(at - finished, 3) if finished else None,
        )
        tries.append(entry)
        say(
            f"  callback {label} #{n}: {entry['submission_to_callback_s']} s "
            f"(job {entry['job_s']} s, signature ok: {signed})"
        )
    times = [t["submission_to_callback_s"] for t in tries if "submission_to_callback_s" in t]
    return {
        "repeats": repeats,
        "median_s": round(pct(times, 0.5), 3) if times else None,
        "first_s": times[0] if times else None,
        "warm_median_s": round(pct(times[1:], 0.5), 3) if len(times) > 1 else None,
        "tries": tries,
    }


# -- 2. distributed, end to end -------------------------------------------------------------------


def end_to_end(url: str, count: int, timeout: float) -> dict[str, Any]:
    """Submit count posts through the gateway, poll until all end; results/s and latency."""
    post_texts, source = texts(count)
    run = uuid.uuid4().hex[:6]
    jobs: dict[str, str] = {}
    accept = []
    refused: list[str] = []
    with GatewayClient(url) as client:
        first = time.time()
        for n, text in enumerate(post_texts):
            started = time.perf_counter()
            try:
                job = client.submit(f"e2e-{run}-{n}", text, SAMPLE_IMAGE)
                jobs[job["job_id"]] = job["id"]
            except Exception as exc:
                refused.append(f"{type(exc).__name__}: {exc}"[:300])
            accept.append(time.perf_counter() - started)
        submitted_s = time.time() - first
        say(f"e2e: {len(jobs)} posts submitted in {submitted_s:.2f} s; waiting")
        ended: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(ended) < len(jobs) and time.monotonic() < deadline:
            for job_id in jobs:
                if job_id not in ended:
                    job = client.get(job_id)
                    if job["status"] in FINAL:
                        ended[job_id] = job
            time.sleep(0.5)
        seen = time.time()
    done = [j for j in ended.values() if j["status"] == "done"]
    failed = [
        {"id": j["id"], "error": j.get("error")} for j in ended.values() if j["status"] == "failed"
    ]
    latency = [parse_time(j["finished_at"]) - parse_time(j["submitted_at"]) for j in done]
    last = max((parse_time(j["finished_at"]) for j in ended.values()), default=seen)
    span = last - first
    return {
        "posts": count,
        "texts": source,
        "accepted": len(jobs),
        "refused": refused,
        "done": len(done),
        "failed": len(failed),
        "failures": failed[:10],
        "unfinished": len(jobs) - len(ended),
        "submit_all_s": round(submitted_s, 2),
        "span_s": round(span, 2),
        "results_per_s": round(len(done) / span, 3) if span > 0 else None,
        "latency_s": {
            "p50": round(pct(latency, 0.5) or 0, 2),
            "p90": round(pct(latency, 0.9) or 0, 2),
            "max": round(max(latency, default=0), 2),
        },
        "accept_ms": {"p50": ms(pct(accept, 0.5)), "max": ms(max(accept, default=0))},
    }


def distributed_part(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    prefix = f"riveg-bench-{uuid.uuid4().hex[:8]}"
    env = base_env(
        RIVEG_BROKER_URL=BROKER,
        RIVEG_BROKER_QUEUE_PREFIX=prefix,
        RIVEG_BROKER_RESULT_BACKEND=REDIS_URL,
        RIVEG_STORE_KIND="s3",
        RIVEG_S3_ENDPOINT=f"127.0.0.1:{free_port()}",
        **S3_KEYS,
        RIVEG_GATEWAY_URL_HOSTS="127.0.0.1",
        RIVEG_GATEWAY_CALLBACK_SECRET=CALLBACK_SECRET,
        RIVEG_LOG_FORMAT="json",
        **{f"RIVEG_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}" for s in STAGES},
    )
    part: dict[str, Any] = {"prefix": prefix, "worker_concurrency": args.worker_concurrency}
    report["distributed"] = part
    say("distributed: starting riveg up ...")
    process, ready = spawn_up(env, work / "up", concurrency=args.worker_concurrency)
    try:
        part["up_startup_s"] = ready.get("startup_s")
        part["up_command"] = f"up --concurrency {args.worker_concurrency}"
        with gateway(env, work / "gateway-distributed.log") as gw, receiver() as hook:
            part["gateway_ready_s"] = gw["ready_s"]
            if args.posts > 0:
                part["end_to_end"] = end_to_end(gw["url"], args.posts, args.e2e_timeout)
                say(f"e2e: {part['end_to_end']['results_per_s']} results/s")
            if args.repeats > 0:
                say("callbacks, distributed ...")
                report.setdefault("callback", {})["distributed"] = callbacks(
                    gw["url"], hook, "dist", args.repeats
                )
        part["gateway_log"] = log_problems(work / "gateway-distributed.log")
    finally:
        try:
            stop_up(process)
        finally:
            delete_queues(BROKER, prefix)
            delete_job_records(REDIS_URL, prefix)
            part["task_results_deleted"] = delete_task_results(REDIS_URL)


def embedded_part(args: argparse.Namespace, work: Path, report: dict[str, Any]) -> None:
    env = base_env(
        RIVEG_STORE_PATH=str(work / "store-embedded"),
        RIVEG_GATEWAY_URL_HOSTS="127.0.0.1",
        RIVEG_GATEWAY_CALLBACK_SECRET=CALLBACK_SECRET,
        RIVEG_LOG_FORMAT="json",
    )
    say("embedded gateway: loading ...")
    with gateway(env, work / "gateway-embedded.log") as gw, receiver() as hook:
        result = callbacks(gw["url"], hook, "emb", args.repeats)
        result["gateway_ready_s"] = gw["ready_s"]
        report.setdefault("callback", {})["embedded"] = result
    result["gateway_log"] = log_problems(work / "gateway-embedded.log")


# -- report ---------------------------------------------------------------------------------------


def tables(report: dict[str, Any]) -> str:
    lines = [
        f"# Gateway benchmark ({report['machine']['cpus']} CPUs, load average at start "
        f"{report['machine']['load_average_start']})",
        "",
    ]
    accept = report.get("accept")
    if accept:
        lines += [
            "## Accept path: POST /v1/posts, distributed mode, no workers",
            "",
            "| image | concurrency | requests | accepted/s | p50 ms | p90 ms | p99 ms | "
            "max ms | statuses | gateway CPU busy | CPU ms/request | /healthz p50/max ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for run in accept["runs"]:
            lat, health, cpu = run["latency_ms"], run["healthz_ms"], run["gateway_cpu"] or {}
            statuses = ", ".join(f"{k}: {v}" for k, v in run["statuses"].items())
            lines.append(
                f"| {run['image']} | {run['concurrency']} | {run['requests']} | "
                f"{run['submissions_per_s']} | {lat['p50']} | {lat['p90']} | "
                f"{lat['p99']} | {lat['max']} | {statuses} | {cpu.get('busy')} | "
                f"{cpu.get('cpu_ms_per_request')} | {health['p50']} / {health['max']} |"
            )
        lines += [
            "",
            "same: every post has the sample image, stored once by content hash (later posts: "
            "one S3 HEAD); unique: a new object per post (S3 HEAD and PUT). Latency is the "
            "client's, over all requests; /healthz is probed every 0.1 s during each run.",
        ]
        if "check" in accept:
            lines += ["", f"Check after the runs: {accept['check']}"]
        lines.append("")
    e2e = report.get("distributed", {}).get("end_to_end")
    if e2e:
        lines += [
            "## End to end, distributed (riveg up + riveg gateway)",
            "",
            "| posts | done | failed | results/s | p50 s | p90 s | max s | span s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {e2e['accepted']} | {e2e['done']} | {e2e['failed']} | "
            f"{e2e['results_per_s']} | {e2e['latency_s']['p50']} | "
            f"{e2e['latency_s']['p90']} | {e2e['latency_s']['max']} | {e2e['span_s']} |",
            "",
        ]
    callback = report.get("callback")
    if callback:
        lines += [
            "## Submission to callback (sample post)",
            "",
            "| mode | tries | first s | warm median s | median s | job s (median) | "
            "finished->callback s (median) | signatures ok |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for mode, result in callback.items():
            ok = [t for t in result["tries"] if "submission_to_callback_s" in t]
            jobs = [t["job_s"] for t in ok if t.get("job_s") is not None]
            gaps = [
                t["finished_to_callback_s"]
                for t in ok
                if t.get("finished_to_callback_s") is not None
            ]
            signed = sum(bool(t.get("signature_ok")) for t in ok)
            lines.append(
                f"| {mode} | {len(ok)}/{result['repeats']} | {result['first_s']} | "
                f"{result['warm_median_s']} | {result['median_s']} | "
                f"{pct(jobs, 0.5)} | {pct(gaps, 0.5)} | {signed}/{len(ok)} |"
            )
        lines += [
            "",
            "The first try runs the LLM expansion of the sample text (and, embedded, is the first "
            "post after loading); the repeats post the same text and image, so the expansion "
            "comes from the LLM generation cache (RIVEG_LLM_CACHE, on by default).",
            "",
        ]
    if report.get("problems"):
        lines += ["## Problems", "", *[f"- {p}" for p in report["problems"]], ""]
    return "\n".join(lines)


def problems(report: dict[str, Any]) -> list[str]:
    """What looked wrong: non-202 answers, failed jobs, missing or unsigned callbacks, gateway
    log warnings."""
    found = []
    for run in report.get("accept", {}).get("runs", []):
        odd = {k: v for k, v in run["statuses"].items() if k != "202"}
        if odd:
            found.append(
                f"accept {run['image']} c={run['concurrency']}: statuses {odd}; "
                f"first: {run['refusals'][:2]}"
            )
    check = report.get("accept", {}).get("check")
    if check and not (
        check["accepted_total"] == check["active_job_records"] == check["queued_messages"]
    ):
        found.append(f"accept: accepted, active records and queued messages differ: {check}")
    e2e = report.get("distributed", {}).get("end_to_end", {})
    if e2e.get("failed") or e2e.get("unfinished") or e2e.get("refused"):
        found.append(
            f"end to end: {e2e.get('failed')} failed, {e2e.get('unfinished')} "
            f"unfinished, refused {e2e.get('refused')}: {e2e.get('failures')}"
        )
    for mode, result in report.get("callback", {}).items():
        for n, entry in enumerate(result["tries"]):
            if (
                "submission_to_callback_s" not in entry
                or not entry.get("signature_ok")
                or (entry.get("job_status") != "done" or not entry.get("job_id_matches"))
            ):
                found.append(f"callback {mode} #{n}: {entry}")
    for name, part in (
        ("accept", report.get("accept")),
        ("distributed", report.get("distributed")),
        ("embedded", report.get("callback", {}).get("embedded")),
    ):
        if part and part.get("gateway_log", {}).get("warnings_or_errors"):
            log = part["gateway_log"]
            found.append(
                f"{name} gateway log: {log['warnings_or_errors']} warning/error lines, "
                f"first: {log['first'][:3]}"
            )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        default="accept,distributed,embedded",
        help="of accept, distributed (end to end and callbacks), embedded (callbacks)",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per accept run")
    parser.add_argument("--max-requests", type=int, default=3000, help="per accept run")
    parser.add_argument("--concurrency", default="1,8", help="accept-run concurrencies")
    parser.add_argument("--images", default="same,unique", help="accept-run image modes")
    parser.add_argument("--posts", type=int, default=30, help="end-to-end posts")
    parser.add_argument("--e2e-timeout", type=float, default=420.0)
    parser.add_argument("--repeats", type=int, default=5, help="callback tries per mode")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="riveg up --concurrency")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gateway.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts & {"accept", "distributed"} and not (
        port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 6379)
    ):
        raise SystemExit("the accept and distributed parts need RabbitMQ and Redis on loopback")
    report: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()],
        },
        "sample": {"image": SAMPLE_IMAGE.name, "image_bytes": SAMPLE_IMAGE.stat().st_size},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="riveg-bench-gw-") as tmp:
        work = Path(tmp)
        try:
            if "accept" in parts:
                accept_part(args, work, report)
            if "distributed" in parts:
                distributed_part(args, work, report)
            if "embedded" in parts and args.repeats > 0:
                embedded_part(args, work, report)
        finally:
            report["wall_s"] = round(time.perf_counter() - started, 1)
            report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            report["problems"] = problems(report)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            text = tables(report)
            args.out.with_suffix(".md").write_text(text + "\n")
            print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
