"""The client side of a stage server: a channel, the stage's stub, the job id as metadata."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from riveg.core.config import Settings
from riveg.serving.security import admin_metadata, open_channel
from riveg.v1 import common_pb2_grpc

JOB_ID_KEY = "x-job-id"

TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Codes a later try may not get: the server is restarting, busy or slow."""
INPUT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})
"""Codes that blame the request: retrying the same request cannot help."""


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """Message-size limits used on both ends."""
    limit = settings.grpc.max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


class StageCallError(RuntimeError):
    """A stage RPC failed; carries the stage, the gRPC status code and the server's message."""

    def __init__(self, stage: str, code: grpc.StatusCode | str, details: str) -> None:
        # Plain-string args: Celery's JSON result backend rebuilds the error as this class.
        status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode[code]
        super().__init__(stage, status.name, details)
        self.stage = stage
        self.code = status
        self.details = details

    def __str__(self) -> str:
        return f"{self.stage} stage failed ({self.code.name}): {self.details}"


class TransientStageError(StageCallError):
    """The stage could not answer now (unavailable, overloaded, too slow): worth retrying."""


class StageInputError(StageCallError):
    """The stage refused the request itself (bad image, unknown key): never retried."""


def stage_error(stage: str, code: grpc.StatusCode, details: str) -> StageCallError:
    """The StageCallError subclass that says what a retry can do about ``code``."""
    if code in TRANSIENT_CODES:
        return TransientStageError(stage, code, details)
    if code in INPUT_CODES:
        return StageInputError(stage, code, details)
    return StageCallError(stage, code, details)


class TimeBudgetSpent(StageCallError):
    """The caller's time budget (a pipeline step's time limit) ran out: never retried."""


_budget_deadline: ContextVar[float | None] = ContextVar("riveg_budget_deadline", default=None)


@contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Stage calls made inside share ``seconds`` (None: no budget): each call's gRPC deadline
    is at most what remains, so the server drops it once the budget is spent; a call made with
    nothing left, or cut short by the budget, fails with :class:`TimeBudgetSpent`. This is how
    a step's time limit holds in a thread-pool worker, which Celery cannot kill."""
    token = _budget_deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _budget_deadline.reset(token)


class StageClient:
    """A channel to one stage server with its stub, the job id sent as metadata."""

    def __init__(self, stage: str, addr: str, stub_class: type, settings: Settings) -> None:
        self.stage = stage
        self.addr = addr
        self.settings = settings
        self.channel = open_channel(addr, settings.grpc, channel_options(settings))
        self.stub = stub_class(self.channel)
        self.admin = common_pb2_grpc.ModelAdminStub(self.channel)

    def call(self, method: str, request: Any, job_id: str = "", timeout: float | None = None):
        """Invoke a unary method within the time budget (:func:`time_budget`), if any; a
        StageCallError subclass on failure."""
        timeout = timeout or self.settings.grpc.timeout_s
        deadline = _budget_deadline.get()
        bounded = deadline is not None and deadline - time.monotonic() < timeout
        if deadline is not None and bounded:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                spent = f"{method} not called: the step's time limit is spent"
                raise TimeBudgetSpent(self.stage, grpc.StatusCode.DEADLINE_EXCEEDED, spent)
        try:
            return getattr(self.stub, method)(
                request, timeout=timeout, metadata=((JOB_ID_KEY, job_id),)
            )
        except grpc.RpcError as exc:
            if bounded and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                spent = f"{method} cut short: the step's time limit ran out"
                raise TimeBudgetSpent(self.stage, exc.code(), spent) from exc
            raise stage_error(self.stage, exc.code(), exc.details() or "") from exc

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata carrying the admin credential for ModelAdmin Load/Rollback (if configured)."""
        return admin_metadata(self.settings.grpc)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server's health check says SERVING; TimeoutError otherwise."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.stage} server at {self.addr} not SERVING after {timeout}s"
                )
            time.sleep(0.5)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()
