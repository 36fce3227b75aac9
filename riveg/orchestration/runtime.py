"""The per-process runtime the tasks use: settings, object store, one client per stage.

In distributed mode clients reach the stage servers at their configured addresses. In embedded
mode :class:`EmbeddedCluster` starts the five stage servers inside this process on loopback
ports, so the same gRPC contracts are exercised without any other process.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from riveg.core.config import Settings, get_settings
from riveg.core.logging import get_logger
from riveg.core.stages import STAGES
from riveg.core.storage import ObjectStore, open_store
from riveg.orchestration.jobs import JobStore, open_jobs
from riveg.serving.client import StageClient
from riveg.serving.server import StageServer
from riveg.serving.stages import build_stage, connect

log = get_logger("riveg.runtime")


@dataclass
class Runtime:
    """Settings, store and lazily opened stage clients of this process."""

    settings: Settings
    store: ObjectStore
    addrs: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, StageClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _jobs: JobStore | None = None
    patient: bool = False
    """A worker's runtime: its job records wait for a Redis that restarts (for as long as a
    step is retried) instead of failing the step."""

    @property
    def jobs(self) -> JobStore:
        """The job records (in this process when embedded, else in the result backend)."""
        with self._lock:
            if self._jobs is None:
                patience = self.settings.pipeline.retry_for_s if self.patient else 0.0
                self._jobs = open_jobs(self.settings, patience)
            return self._jobs

    def client(self, stage: str) -> StageClient:
        """The (cached) client of a stage server."""
        with self._lock:
            if stage not in self._clients:
                self._clients[stage] = connect(stage, self.settings, self.addrs.get(stage))
            return self._clients[stage]

    def close(self) -> None:
        """Close every open channel."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """This process's runtime (created from the settings on first use)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = get_settings()
            _runtime = Runtime(settings, open_store(settings))
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install the runtime the tasks use (embedded mode, tests)."""
    global _runtime
    with _runtime_lock:
        _runtime = runtime


class EmbeddedCluster:
    """All five stage servers in this process on 127.0.0.1 ephemeral ports."""

    def __init__(self, settings: Settings, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.servers: dict[str, StageServer] = {}
        self.load_seconds: dict[str, float] = {}
        self.runtime: Runtime | None = None

    def start(self) -> Runtime:
        """Start every server, load every model, and return a runtime pointing at them."""
        addrs = {}
        for stage in STAGES:
            server = StageServer(build_stage(stage, self.settings, self.store), self.settings)
            port = server.start(port=0, host="127.0.0.1", load=False)
            self.servers[stage] = server
            addrs[stage] = f"127.0.0.1:{port}"
        # The five models load side by side: most of a load is reading files and native code.
        with ThreadPoolExecutor(len(self.servers), thread_name_prefix="load") as loaders:
            timings = loaders.map(self._load, self.servers.items())
            self.load_seconds.update(timings)
        self.runtime = Runtime(self.settings, self.store, addrs)
        return self.runtime

    @staticmethod
    def _load(item: tuple[str, StageServer]) -> tuple[str, float]:
        stage, server = item
        started = time.perf_counter()
        server.load_model()
        return stage, round(time.perf_counter() - started, 2)

    def stop(self) -> None:
        """Stop every server (in-flight calls finish first)."""
        for server in self.servers.values():
            server.stop(grace=1.0)
