"""``riveg up``: the distributed pipeline on one machine, every part its own process.

Starts an S3 server (nanio) when the configured endpoint is on loopback and not answering, the
five stage servers, and one Celery worker per queue, all against RabbitMQ and Redis; waits until
every server is SERVING and every worker answers a ping; stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from riveg import STAGES
from riveg.common.config import Settings
from riveg.common.logging import get_logger
from riveg.orchestration.commands import cli_settings, config_option

log = get_logger("riveg.up")
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Launcher:
    """Child processes of a local distributed deployment."""

    settings: Settings
    log_dir: Path
    env: dict[str, str]
    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start a child with its output in <log_dir>/<name>.log."""
        logfile = (self.log_dir / f"{name}.log").open("ab")
        self.children[name] = subprocess.Popen(
            argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env={**self.env, **(extra_env or {})},
            start_new_session=True,
        )
        log.info("started", process=name, pid=self.children[name].pid)

    def start_s3_if_needed(self) -> None:
        """Run nanio for a loopback S3 endpoint that nobody serves yet."""
        if self.settings.store != "s3":
            return
        host, port = self.settings.s3_endpoint.rsplit(":", 1)
        if host not in ("127.0.0.1", "localhost") or port_open(host, int(port)):
            return
        data_dir = self.log_dir.parent / "s3-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spawn(
            "s3",
            [_bin("nanio"), "serve", "--host", host, "--port", port, "--data-dir", str(data_dir),
             "--no-access-log", "--log-level", "warning"],
            {"NANIO_ACCESS_KEY": self.settings.s3_access_key,
             "NANIO_SECRET_KEY": self.settings.s3_secret_key},
        )  # fmt: skip
        self._wait(lambda: port_open(host, int(port)), 30, "the S3 server")

    def start_servers(self) -> None:
        """One `riveg serve STAGE` per stage; wait until each is SERVING."""
        from riveg.orchestration.stages import connect

        for stage in STAGES:
            self.spawn(f"serve-{stage}", [_bin("riveg"), "serve", stage])
        for stage in STAGES:
            client = connect(stage, self.settings)
            try:
                self._check_alive()
                client.wait_ready(timeout=600)
            finally:
                client.close()

    def start_workers(self, concurrency: int) -> None:
        """One `riveg worker QUEUE` per queue; wait until all answer a ping."""
        from riveg.orchestration.celery_app import configure_app

        queues = [*STAGES, "pipeline"]
        for queue in queues:
            self.spawn(f"worker-{queue}", [_bin("riveg"), "worker", queue, "--concurrency",
                                           str(concurrency)])  # fmt: skip
        app = configure_app(self.settings)

        def all_answer() -> bool:
            self._check_alive()
            replies = app.control.ping(timeout=1.0) or []
            mine = {n for r in replies for n in r if n.startswith(f"{self.settings.queue_prefix}-")}
            return len(mine) >= len(queues)

        self._wait(all_answer, 120, "the Celery workers")

    def _check_alive(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise click.ClickException(
                    f"{name} exited with status {child.returncode}; see {self.log_dir / name}.log"
                )

    def _wait(self, ready, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise click.ClickException(f"{what} did not come up within {timeout:.0f}s")
            time.sleep(0.5)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every child, then SIGKILL whatever is left after the grace period."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        log.info("all processes stopped")

    def watch(self) -> None:
        """Block until a signal arrives or a child dies."""
        stop = {"now": False}

        def on_signal(*_: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop["now"]:
            self._check_alive()
            time.sleep(0.5)


def _bin(name: str) -> str:
    """A console script of this environment (next to the running Python)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@click.command()
@click.option(
    "--broker",
    "broker_url",
    default=None,
    help=f"Celery broker URL (default: RIVEG_BROKER_URL or {DEFAULT_BROKER}).",
)
@click.option("--concurrency", default=4, show_default=True, help="Threads per worker.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/up"),
    show_default=True,
    help="Logs and local S3 data.",
)
@config_option
def up(broker_url: str | None, concurrency: int, state_dir: Path, config_file: str | None) -> None:
    """Start the distributed pipeline locally: S3 (if needed), 5 stage servers, 6 workers."""
    broker = broker_url or os.environ.get("RIVEG_BROKER_URL") or DEFAULT_BROKER
    settings = cli_settings(config_file, broker_url=broker)
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RIVEG_BROKER_URL": broker, "RIVEG_STORE": str(settings.store),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    if config_file:
        env["RIVEG_CONFIG"] = str(Path(config_file).resolve())
    launcher = Launcher(settings, log_dir, env)
    started = time.perf_counter()
    try:
        launcher.start_s3_if_needed()
        launcher.start_servers()
        launcher.start_workers(concurrency)
        click.echo(json.dumps({
            "ready": True, "broker": broker, "store": settings.store,
            "servers": {s: settings.stage_addr(s) for s in STAGES},
            "processes": {n: c.pid for n, c in launcher.children.items()},
            "logs": str(log_dir), "startup_s": round(time.perf_counter() - started, 1),
        }))  # fmt: skip
        sys.stdout.flush()
        launcher.watch()
    finally:
        launcher.stop()


def spawn_up(
    env: dict[str, str], state_dir: Path, concurrency: int = 2, timeout: float = 600.0
) -> tuple[subprocess.Popen, dict]:
    """Run `riveg up` in the background with the given environment; return the process and its
    ready report once every part is up (RuntimeError, with the logs' tails, otherwise)."""
    process = subprocess.Popen(
        [_bin("riveg"), "up", "--state-dir", str(state_dir), "--concurrency", str(concurrency)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    ready: dict = {}

    def read() -> None:
        for line in process.stdout or []:
            if line.startswith("{"):
                ready.update(json.loads(line))

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
