"""Test support: free ports, waiting for a port, `riveg up` in the background, and deleting the
broker queues a test created."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import redis
from kombu import Connection

from riveg.core.stages import QUEUES
from riveg.orchestration.launcher import free_port

__all__ = ["free_port"]  # re-exported for the tests


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Block until 127.0.0.1:port accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def console_script(name: str) -> str:
    """A console script of this environment (next to the running Python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def spawn_up(
    env: dict[str, str], state_dir: Path, concurrency: int = 2, timeout: float = 600.0
) -> tuple[subprocess.Popen, dict]:
    """Run `riveg up` in the background with the given environment; return the process and its
    ready report once every part is up (RuntimeError, with the logs' tails, otherwise)."""
    process = subprocess.Popen(
        [console_script("riveg"), "up", "--state-dir", str(state_dir),
         "--concurrency", str(concurrency)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    ready: dict = {}

    def read() -> None:
        for line in process.stdout or []:
            if line.startswith("{"):
                status = json.loads(line)
                ready.update(status)
                if "restarted" in status:  # the restarted child's new pid
                    ready["processes"][status["restarted"]] = status["pid"]

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if not ready:
        process.kill()
        logs = "\n".join(
            f"== {p.name}\n{p.read_text()[-1500:]}" for p in (state_dir / "logs").glob("*.log")
        )
        raise RuntimeError(f"riveg up did not become ready (exit {process.poll()}):\n{logs}")
    return process, ready


def stop_up(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM a `riveg up` started by spawn_up and wait; kill its process group if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def delete_queues(broker_url: str, prefix: str) -> None:
    """Delete the ``<prefix>.<queue>`` queues of every stage and ``pipeline``, the intake and
    callbacks queues and the results exchange on the broker, the ones a test's workers or
    submissions declared (one never declared is skipped)."""
    queues = [*QUEUES, "intake", "intake.dead", "callbacks", "dead"]
    with Connection(broker_url) as connection:
        channel = connection.channel()
        for queue in queues:
            try:
                channel.queue_delete(f"{prefix}.{queue}")
            except Exception:  # never declared: the broker closes the channel; open another
                channel = connection.channel()
        # Celery declares a direct exchange named after each queue it routes to.
        for exchange in (*QUEUES, "results", "intake.dead", "dead"):
            try:
                channel.exchange_delete(f"{prefix}.{exchange}")
            except Exception:
                channel = connection.channel()


def delete_job_records(redis_url: str, prefix: str) -> None:
    """Delete the job records the pipeline kept in Redis for the queue prefix ``prefix`` and
    Celery's task results: ``redis_url`` must name a database of the caller's own."""
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"riveg-jobs:{prefix}:*", "celery-task-meta-*"):
            keys = list(client.scan_iter(match=pattern, count=500))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def spawn_gateway(
    env: dict[str, str], log: Path, timeout: float = 180.0
) -> tuple[subprocess.Popen, str, dict]:
    """Run `riveg gateway` on a free port with its output in ``log``; return the process, its
    URL and its /readyz answer once ready (RuntimeError with the log's tail otherwise)."""
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [console_script("riveg"), "gateway", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=5)
            if ready.status_code == 200:
                return process, url, ready.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    if process.poll() is None:
        process.kill()
    raise RuntimeError(f"riveg gateway not ready (exit {process.poll()}):\n"
                       f"{log.read_text()[-3000:]}")  # fmt: skip
