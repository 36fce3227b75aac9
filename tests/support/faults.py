"""The fault harness shared by the fault suite (tests/test_faults.py) and the soak benchmark
(benchmarks/soak.py): a distributed deployment (`riveg up`) on a private RabbitMQ node, Redis and
S3 server, a `riveg batch` run against it, faults injected while it runs, and what the run left
behind counted: posts done, failed and duplicated, the time to recover, and repeated steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from minio import Minio
from PIL import Image

from tests.support.private import PrivateRabbit, PrivateRedis, PrivateS3
from tests.support.processes import console_script, free_port, spawn_up, stop_up

PREFIX = "riveg-faults"
BUCKET = "riveg-faults"
TEXTS = (
    "Astronaut Eileen Collins poses at NASA 's Johnson Space Center in Houston .",
    "Eileen Collins and Barack Obama talk about the shuttle Discovery .",
    "Great photo from the Kennedy Space Center in Florida today !",
    "Collins commanded Discovery for NASA in 1999 .",
)
LONG_TEXT = (
    "Obama , Merkel , Putin , Macron , Trudeau , Modi , Abe , Erdogan , Netanyahu , Zuma , "
    "Duterte , Turnbull and Moon met in Paris , London , Berlin , Rome , Madrid , Tokyo and "
    "Moscow with NASA , Google , Apple and Microsoft ."
)
"""A post with about 30 entities: its expansion step takes seconds (a step in flight)."""


@dataclass
class Deployment:
    """`riveg up` with its private broker, Redis and S3, and what it printed when ready."""

    root: Path
    rabbit: PrivateRabbit
    redis: PrivateRedis
    s3: PrivateS3
    env: dict[str, str]
    up: subprocess.Popen
    ready: dict[str, Any]

    def pid(self, process: str) -> int:
        """The current pid of one of `riveg up`'s children (updated when it is restarted)."""
        return self.ready["processes"][process]

    def kill(self, process: str) -> None:
        """SIGKILL one child of `riveg up` (it restarts it)."""
        os.kill(self.pid(process), signal.SIGKILL)

    def log_lines(self, process: str) -> Iterator[dict[str, Any]]:
        """The JSON log lines of a child, across its restarts."""
        path = self.root / "state" / "logs" / f"{process}.log"
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def results_in_store(self, id_prefix: str) -> list[str]:
        """The result keys under ``results/posts/<id_prefix>``."""
        client = Minio(self.s3.endpoint, "minioadmin", "minioadmin", secure=False)
        objects = client.list_objects(BUCKET, prefix=f"results/posts/{id_prefix}", recursive=True)
        return [item.object_name for item in objects]


@contextmanager
def deployment(root: Path, concurrency: int = 2) -> Iterator[Deployment]:
    """Start a private RabbitMQ node, Redis and nanio, then `riveg up` against them; stop all
    of it afterwards (nothing of the machine's own servers is used)."""
    rabbit = PrivateRabbit("rabbitmq", root / "rabbitmq")
    redis = PrivateRedis("redis", root / "redis")
    s3 = PrivateS3("s3", root / "s3")
    started: list[Any] = []
    up = None
    try:
        for server in (rabbit, redis, s3):
            server.start()
            started.append(server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
        env.update({
            "RIVEG_BROKER_URL": rabbit.url, "RIVEG_BROKER_RESULT_BACKEND": redis.url(0),
            "RIVEG_BROKER_QUEUE_PREFIX": PREFIX, "RIVEG_STORE_KIND": "s3",
            "RIVEG_S3_ENDPOINT": s3.endpoint, "RIVEG_S3_BUCKET": BUCKET,
            "RIVEG_LOG_FORMAT": "json",
            **{f"RIVEG_{stage.upper()}_ADDR": f"127.0.0.1:{free_port()}"
               for stage in ("llm", "mner", "ve", "vg", "seg")},
        })  # fmt: skip
        up, ready = spawn_up(env, root / "state", concurrency=concurrency)
        yield Deployment(root, rabbit, redis, s3, env, up, ready)
    finally:
        if up is not None:
            with suppress(subprocess.TimeoutExpired):
                stop_up(up)
        for server in reversed(started):
            server.stop()


@dataclass
class FaultRun:
    """What one batch run with a fault left behind."""

    name: str
    posts: int
    summary: dict[str, Any]
    lines: list[dict[str, Any]]
    stored: list[str]
    injected_at: float | None
    recovered_s: float | None
    wall_s: float
    repeated_steps: dict[str, int] = field(default_factory=dict)
    exit_code: int = 0
    stderr_tail: str = ""
    recoveries: dict[str, float] = field(default_factory=dict)
    repeated_calls: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum("error" not in line for line in self.lines)

    @property
    def failed(self) -> int:
        return sum("error" in line for line in self.lines)

    @property
    def duplicated(self) -> int:
        """Posts with more than one line in the output, or more than one result in the store."""
        ids = Counter(str(line.get("id")) for line in self.lines)
        stored = Counter(self.stored)
        return sum(n > 1 for n in ids.values()) + sum(n > 1 for n in stored.values())

    def figures(self) -> dict[str, Any]:
        """The run's figures, as reported."""
        return {
            "posts": self.posts, "done": self.done, "failed": self.failed,
            "duplicated": self.duplicated, "results_in_store": len(self.stored),
            "recovered_s": self.recovered_s, "wall_s": round(self.wall_s, 1),
            "repeated_steps": sum(self.repeated_steps.values()),
            "repeated_by_step": self.repeated_steps,
            "repeated_stage_calls": sum(self.repeated_calls.values()),
            "repeated_by_method": self.repeated_calls, "recoveries_s": self.recoveries,
            "errors": sorted({line["error"][:160] for line in self.lines if "error" in line}),
        }  # fmt: skip


def write_posts(
    folder: Path,
    name: str,
    count: int,
    sample_image: Path,
    big_first: bool = False,
    texts: tuple[str, ...] = TEXTS,
    long_at: int | None = None,
) -> Path:
    """A JSONL of ``count`` posts ``<name>-<i>`` about the sample image, and its images folder;
    ``big_first``: the first post's image is a 14 MB, 4096x4096 PNG (at the pixel limit, a
    third of a second to decode), the kind of post whose decode can push a worker past its
    memory limit. ``long_at``: that post has :data:`LONG_TEXT`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "images" / "sample.jpg").write_bytes(sample_image.read_bytes())
    if big_first:
        ramp = (np.indices((4096, 4096)).sum(0) % 256).astype("uint8")
        noise = np.random.default_rng(0).integers(0, 16, ramp.shape, dtype="uint8")
        pixels = np.stack([ramp, ramp.T, ramp ^ noise], -1)
        Image.fromarray(pixels).save(folder / "images" / "big.png")
    path = folder / f"{name}.jsonl"
    with path.open("w") as out:
        for i in range(count):
            image = "big.png" if big_first and i == 0 else "sample.jpg"
            text = LONG_TEXT if i == long_at else texts[i % len(texts)]
            post = {"id": f"{name}-{i:04d}", "text": text, "image": image}
            out.write(json.dumps(post) + "\n")
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def output_of(posts: Path) -> Path:
    """Where `riveg batch` writes the results of ``posts``."""
    return posts.with_suffix(".out.jsonl")


def start_batch(
    deploy: Deployment, posts: Path, window: int = 4, timeout: float = 900.0
) -> subprocess.Popen:
    """`riveg batch` over ``posts`` against the deployment, in the background."""
    return subprocess.Popen(
        [console_script("riveg"), "batch", str(posts), "--images", str(posts.parent / "images"),
         "--out", str(output_of(posts)), "--window", str(window), "--json",
         "--timeout", str(timeout)],
        env=deploy.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def count_lines(path: Path) -> int:
    """Result lines written so far (counted, not parsed)."""
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


Fault = Callable[[Deployment], None]


def run_with_fault(
    deploy: Deployment,
    name: str,
    posts: Path,
    fault: Fault | None,
    after: int = 2,
    window: int = 4,
    timeout: float = 900.0,
) -> FaultRun:
    """Run `riveg batch` over ``posts``; once ``after`` results are out, inject ``fault``; wait
    for the batch to end and count what it left (output lines, results in the store, steps
    done more than once according to the workers' logs)."""
    schedule = [] if fault is None else [(after, name, fault)]
    return run_with_faults(deploy, name, posts, schedule, window, timeout)


def run_with_faults(
    deploy: Deployment,
    name: str,
    posts: Path,
    schedule: list[tuple[int, str, Fault]],
    window: int = 4,
    timeout: float = 900.0,
) -> FaultRun:
    """:func:`run_with_fault` with several faults: ``(after, label, fault)`` each, injected in
    order once ``after`` results are out; the time each took to recover (from its injection to
    the next result) is in ``recoveries``."""
    out = output_of(posts)
    total = sum(1 for line in posts.read_text().splitlines() if line.strip())
    started = time.monotonic()
    batch = start_batch(deploy, posts, window, timeout)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(batch.stderr or []), daemon=True)
    reader.start()
    pending = list(schedule)
    injected: list[tuple[str, float, int]] = []  # label, when, results out then
    recoveries: dict[str, float] = {}
    first_injection = None

    def note_recoveries(count: int) -> None:
        for label, at, count_then in injected:
            if label not in recoveries and count > count_then:
                recoveries[label] = round(time.monotonic() - at, 1)

    while batch.poll() is None and time.monotonic() - started < timeout:
        count = count_lines(out)
        note_recoveries(count)
        if pending and count >= pending[0][0]:
            _, label, fault = pending.pop(0)
            injected.append((label, time.monotonic(), count))
            first_injection = first_injection or time.monotonic()
            fault(deploy)
        time.sleep(0.2)
    if batch.poll() is None:
        batch.kill()
    stdout = batch.communicate()[0]
    reader.join(timeout=5)
    note_recoveries(count_lines(out))
    last = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
    lines = _lines(out)
    job_ids = {str(line["job_id"]) for line in lines if "job_id" in line}
    return FaultRun(
        name=name, posts=total, summary=json.loads(last) if last.startswith("{") else {},
        lines=lines, stored=deploy.results_in_store(f"{name}-"),
        repeated_calls=repeated_calls(deploy, job_ids),
        injected_at=first_injection, recovered_s=next(iter(recoveries.values()), None),
        wall_s=time.monotonic() - started, repeated_steps=repeated_steps(deploy, f"{name}-"),
        exit_code=batch.returncode, stderr_tail="".join(stderr)[-3000:], recoveries=recoveries,
    )  # fmt: skip


def repeated_steps(deploy: Deployment, id_prefix: str) -> dict[str, int]:
    """Per step: how many times a step of these posts was done beyond once (from the workers'
    "step done" log lines): the stage calls a fault made the pipeline repeat."""
    done: Counter[tuple[str, str]] = Counter()
    for process in deploy.ready["processes"]:
        if not process.startswith("worker-"):
            continue
        for line in deploy.log_lines(process):
            if line.get("event") == "step done" and str(line.get("post_id")).startswith(id_prefix):
                done[(line["step"], line["post_id"])] += 1
    repeated: Counter[str] = Counter()
    for (step, _), count in done.items():
        repeated[step] += count - 1
    return {step: n for step, n in sorted(repeated.items()) if n}


def repeated_calls(deploy: Deployment, job_ids: set[str]) -> dict[str, int]:
    """Per stage method: the calls the servers answered beyond one per job (from their "rpc
    done" log lines), a killed worker's unfinished calls included."""
    answered: Counter[tuple[str, str]] = Counter()
    for process in deploy.ready["processes"]:
        if not process.startswith("serve-"):
            continue
        for line in deploy.log_lines(process):
            if line.get("event") == "rpc done" and line.get("job_id") in job_ids:
                answered[(line["rpc"].rsplit("/", 1)[-1], line["job_id"])] += 1
    repeated: Counter[str] = Counter()
    for (method, _), count in answered.items():
        repeated[method] += count - 1
    return {method: n for method, n in sorted(repeated.items()) if n}


def step_in_flight(deploy: Deployment, process: str, step: str, timeout: float = 120.0) -> None:
    """Wait until ``process`` is running a ``step`` (started, not yet done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in deploy.log_lines(process) if line.get("step") == step]
        started = sum(line.get("event") == "step started" for line in lines)
        ended = sum(line.get("event") in ("step done", "step failed") for line in lines)
        if started > ended:
            return
        time.sleep(0.05)
    raise TimeoutError(f"no {step} step ran in {process} within {timeout} s")


def kill_on_start(
    deploy: Deployment, post_id: str, times: int, process: str = "worker-pipeline"
) -> Callable[[], int]:
    """A poison post: SIGKILL ``process`` the first ``times`` times a step of ``post_id`` starts
    there (as a post that drives its worker out of memory would). Returns a function that stops
    watching and gives the number of kills."""
    stop = threading.Event()
    kills = [0]

    def watch() -> None:
        seen = 0
        while not stop.is_set():
            starts = [
                line for line in deploy.log_lines(process)
                if line.get("event") == "step started" and line.get("post_id") == post_id
            ]  # fmt: skip
            if len(starts) > seen and kills[0] < times:
                seen = len(starts)
                try:
                    deploy.kill(process)
                    kills[0] += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def finish() -> int:
        stop.set()
        thread.join(timeout=5)
        return kills[0]

    return finish
