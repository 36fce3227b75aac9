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
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from kombu.utils.url import maybe_sanitize_url

from riveg.core.cli import cli_settings, config_option
from riveg.core.config import Settings, settings_env
from riveg.core.logging import get_logger
from riveg.core.network import is_loopback_host
from riveg.core.stages import QUEUES, STAGES
from riveg.orchestration.celery_app import configure_app
from riveg.serving.stages import connect

log = get_logger("riveg.up")
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


RESTART_MAX_WAIT_S = 30.0
"""Longest wait before restarting a child that keeps dying."""
RESTART_RESET_S = 60.0
"""A child that lived this long before dying is restarted at once (its backoff starts over)."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
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
    metrics_ports: dict[str, int] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    _started_at: dict[str, float] = field(default_factory=dict)
    _quick_deaths: dict[str, int] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)

    def metrics_port(self, name: str) -> int:
        """The metrics port of child ``name``: ``RIVEG_METRICS_PORT`` + its index when set,
        else a free port; each child gets its own."""
        base = self.settings.metrics.port
        if base is not None:
            port = base + len(self.metrics_ports)
        else:  # a free port that is none of the ports this deployment binds
            taken = {self.settings.server_port(stage) for stage in STAGES}
            taken |= {int(self.settings.s3.endpoint.rsplit(":", 1)[1])}
            taken |= set(self.metrics_ports.values())
            port = free_port()
            while port in taken:
                port = free_port()
        self.metrics_ports[name] = port
        return port

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start a child with its output in <log_dir>/<name>.log."""
        self.commands[name] = (argv, extra_env or {})
        self.restarts.setdefault(name, 0)
        with (self.log_dir / f"{name}.log").open("ab") as logfile:
            self.children[name] = subprocess.Popen(
                argv,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env={**self.env, **(extra_env or {})},
                start_new_session=True,
            )
        self._started_at[name] = time.monotonic()
        log.info("started", process=name, pid=self.children[name].pid)

    def supervise(self) -> list[str]:
        """Restart the children that died: after 1, 2, 4 ... 30 s while they keep dying within
        a minute of their start, at once after a longer life. The names restarted now."""
        now = time.monotonic()
        restarted = []
        for name, child in list(self.children.items()):
            if child.poll() is None:
                continue
            if name not in self._due:
                lived = now - self._started_at.get(name, now)
                quick = self._quick_deaths.get(name, 0) + 1 if lived < RESTART_RESET_S else 0
                self._quick_deaths[name] = quick
                delay = min(RESTART_MAX_WAIT_S, 2 ** (quick - 1)) if quick else 0.0
                self._due[name] = now + delay
                log.warning("process died", process=name, status=child.returncode,
                            lived_s=round(lived, 1), restart_in_s=delay)  # fmt: skip
            if now >= self._due[name]:
                del self._due[name]
                self.restarts[name] += 1
                argv, extra_env = self.commands[name]
                self.spawn(name, argv, extra_env)
                log.warning("process restarted", process=name, restarts=self.restarts[name],
                            pid=self.children[name].pid)  # fmt: skip
                restarted.append(name)
        return restarted

    def start_s3_if_needed(self) -> None:
        """Run nanio for a loopback S3 endpoint that nobody serves yet."""
        if self.settings.store.kind != "s3":
            return
        host, port = self.settings.s3.endpoint.rsplit(":", 1)
        if not is_loopback_host(host) or port_open(host, int(port)):
            return
        data_dir = self.log_dir.parent / "s3-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spawn(
            "s3",
            [_bin("nanio"), "serve", "--host", host, "--port", port, "--data-dir", str(data_dir),
             "--no-access-log", "--log-level", "warning"],
            {"NANIO_ACCESS_KEY": self.settings.s3.access_key.get_secret_value(),
             "NANIO_SECRET_KEY": self.settings.s3.secret_key.get_secret_value()},
        )  # fmt: skip
        self._wait(lambda: port_open(host, int(port)), 30, "the S3 server")

    def start_servers(self) -> None:
        """One `riveg serve STAGE` per stage; wait until each is SERVING."""
        for stage in STAGES:
            name = f"serve-{stage}"
            self.spawn(name, [_bin("riveg"), "serve", stage, "--metrics-port",
                              str(self.metrics_port(name))])  # fmt: skip
        for stage in STAGES:
            client = connect(stage, self.settings)
            try:
                self._check_alive()
                client.wait_ready(timeout=600)
            finally:
                client.close()

    def start_workers(self, concurrency: int) -> None:
        """One `riveg worker QUEUE` per queue; wait until all answer a ping."""
        queues = QUEUES
        for queue in queues:
            name = f"worker-{queue}"
            self.spawn(name, [_bin("riveg"), "worker", queue, "--concurrency", str(concurrency),
                              "--metrics-port", str(self.metrics_port(name))])  # fmt: skip
        app = configure_app(self.settings)

        def all_answer() -> bool:
            self._check_alive()
            replies = app.control.ping(timeout=1.0) or []
            prefix = f"{self.settings.broker.queue_prefix}-"
            mine = {n for r in replies for n in r if n.startswith(prefix)}
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
        """Supervise the children until SIGTERM/SIGINT: one that dies is restarted (with
        backoff), and a status line ``{"restarted": name, "restarts": {...}}`` is printed."""
        stop = {"now": False}

        def on_signal(*_: object) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not stop["now"]:
            for name in self.supervise():
                click.echo(json.dumps({"restarted": name, "restarts": self.restarts,
                                       "pid": self.children[name].pid}))  # fmt: skip
                sys.stdout.flush()
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
    help=f"Celery broker (default: RIVEG_BROKER_URL, the --config file's, else {DEFAULT_BROKER}).",
)
@click.option(
    "--concurrency",
    default=16,
    show_default=True,
    help="Threads per worker (they wait on stage servers, which batch the calls that meet).",
)
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
    settings = cli_settings(config_file, broker_url=broker_url)
    if settings.embedded:  # no broker from the flag, the environment or the file
        settings = cli_settings(config_file, broker_url=DEFAULT_BROKER)
    broker = maybe_sanitize_url(settings.broker.url.get_secret_value())  # type: ignore[union-attr]
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # Every child gets this command's settings (flags and --config included) as RIVEG_*.
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    env.pop("RIVEG_CONFIG", None)
    launcher = Launcher(settings, log_dir, env)
    started = time.perf_counter()
    try:
        launcher.start_s3_if_needed()
        launcher.start_servers()
        launcher.start_workers(concurrency)
        click.echo(json.dumps({
            "ready": True, "broker": broker, "store": settings.store.kind,
            "servers": {s: settings.stage(s).addr for s in STAGES},
            "processes": {n: c.pid for n, c in launcher.children.items()},
            "restarts": launcher.restarts,
            "metrics": {n: f"http://{settings.metrics.host}:{p}/metrics"
                        for n, p in launcher.metrics_ports.items()},
            "logs": str(log_dir), "startup_s": round(time.perf_counter() - started, 1),
        }))  # fmt: skip
        sys.stdout.flush()
        launcher.watch()
    finally:
        launcher.stop()
