"""Private RabbitMQ, Redis and S3 servers for the fault suite: each on free loopback ports, with
its data in a folder of the test's, so that a test may stop, kill and restart it without touching
the machine's own servers. A restart keeps the data (durable queues and persistent messages,
Redis' append-only file, nanio's folder), as a production restart does."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import console_script, free_port, wait_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
"""The broker's start script itself (``/usr/sbin/rabbitmq-server`` switches to its own user)."""


def missing_servers() -> list[str]:
    """The server programs this machine lacks (the fault suite skips, naming them)."""
    missing = [] if RABBITMQ_SERVER.exists() else [str(RABBITMQ_SERVER)]
    missing += [name for name in ("redis-server",) if shutil.which(name) is None]
    if not Path(console_script("nanio")).exists() and shutil.which("nanio") is None:
        missing.append("nanio")
    return missing


@dataclass
class PrivateServer:
    """One server process on its own port: started, stopped (SIGTERM, as an orchestrator does),
    killed (SIGKILL) and started again on the same port with the same data."""

    name: str
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until its port accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_port(self.port, timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self._signal(signal.SIGKILL, 30.0)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port and data."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def _signal(self, signum: int, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@dataclass
class PrivateRabbit(PrivateServer):
    """A RabbitMQ node of its own (node name, AMQP and distribution ports, database, logs, no
    plugins), guest allowed from loopback."""

    dist_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def command(self) -> list[str]:
        return [str(RABBITMQ_SERVER)]

    def environment(self) -> dict[str, str]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        return {
            **os.environ,
            "RABBITMQ_NODENAME": f"riveg-faults-{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "logs"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }


@dataclass
class PrivateRedis(PrivateServer):
    """A Redis of its own that keeps its data in an append-only file across restarts."""

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self) -> list[str]:
        return [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.root), "--appendonly", "yes", "--save", "",
        ]  # fmt: skip


@dataclass
class PrivateS3(PrivateServer):
    """nanio serving a folder of its own with the default development credentials."""

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            console_script("nanio"), "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.root / "data"), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NANIO_ACCESS_KEY": "minioadmin", "NANIO_SECRET_KEY": "minioadmin"}
