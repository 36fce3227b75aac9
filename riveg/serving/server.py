"""The gRPC server every stage runs (the client side is :mod:`riveg.serving.client`).

A stage server = one servicer (transport) + one backend (model), plus what every server needs:
``grpc.health.v1`` health checking (NOT_SERVING until the model is loaded), server reflection,
the ``ModelAdmin`` service, a maximum message size, deadlines honoured, the job id from call
metadata bound into structured logs, and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from riveg.core.config import GrpcSettings, Settings
from riveg.core.errors import InvalidInput
from riveg.core.logging import get_logger
from riveg.core.observability import tag_current_span
from riveg.core.stages import Stage
from riveg.core.storage import ObjectNotFound, StoreUnavailable
from riveg.serving import metrics
from riveg.serving.backend import Backend, ServerStopping
from riveg.serving.batching import DeadlineExpired
from riveg.serving.client import JOB_ID_KEY, channel_options
from riveg.serving.manager import ModelManager, warm
from riveg.serving.security import admin_refusal, server_credentials
from riveg.v1 import common_pb2, common_pb2_grpc

log = get_logger("riveg.rpc")


def _status_for(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ObjectNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, (StoreUnavailable, ServerStopping)):  # the caller's task retries it
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, DeadlineExpired):  # waited for its batch past its deadline
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


class _CallContextInterceptor(grpc.ServerInterceptor):
    """Binds the job id to the logs and the trace, refuses calls whose deadline has passed, maps
    errors, and counts and times every call (``riveg_stage_*`` metrics)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        name = metrics.method_name(method)
        behaviour = handler.unary_unary
        in_flight = metrics.IN_FLIGHT.labels(self.stage)
        latency = metrics.LATENCY.labels(self.stage, name)

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            metadata = dict(context.invocation_metadata() or ())
            job_id = metadata.get(JOB_ID_KEY, "")
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            in_flight.inc()
            try:
                with structlog.contextvars.bound_contextvars(job_id=job_id, rpc=method):
                    tag_current_span(job_id=job_id, stage=self.stage)
                    remaining = context.time_remaining()
                    if remaining is not None and remaining <= 0:
                        code = grpc.StatusCode.DEADLINE_EXCEEDED
                        context.abort(code, "deadline passed on arrival")
                    try:
                        response = behaviour(request, context)
                    except Exception as exc:
                        if context.code() is not None:  # already aborted by the servicer
                            code = context.code()
                            raise
                        code = _status_for(exc)
                        log.warning("rpc failed", code=code.name, error=str(exc))
                        context.abort(code, f"{type(exc).__name__}: {exc}")
                    log.info("rpc done", ms=round((time.perf_counter() - started) * 1000, 1))
                    return response
            finally:
                in_flight.dec()
                latency.observe(time.perf_counter() - started)
                metrics.REQUESTS.labels(self.stage, name, code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def check_deadline(context: grpc.ServicerContext, needed_s: float = 0.0) -> None:
    """Abort with DEADLINE_EXCEEDED when less than needed_s remains of the caller's deadline."""
    remaining = context.time_remaining()
    if remaining is not None and remaining < needed_s:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{remaining:.2f}s left of the deadline")


class _ModelAdminServicer(common_pb2_grpc.ModelAdminServicer):
    """Current, List, Load and Rollback over the stage's ModelManager; Load and Rollback (which
    swap the model every client gets) need the admin credential, Current and List do not."""

    def __init__(self, models: ModelManager, grpc_settings: GrpcSettings) -> None:
        self.models = models
        self.grpc_settings = grpc_settings

    def _authorize(self, context: grpc.ServicerContext) -> None:
        refusal = admin_refusal(context, self.grpc_settings)
        if refusal is not None:
            log.warning("model admin refused", peer=context.peer(), reason=refusal)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    def Current(self, request, context):
        backend = self.models.current
        previous = self.models.previous
        return common_pb2.CurrentModelResponse(
            model=backend.model,
            ready=backend.ready,
            backend=self.models.backend_name,
            previous=previous.model if previous is not None else "",
        )

    def List(self, request, context):
        rows = [common_pb2.ModelVersion(**row) for row in self.models.available()]
        return common_pb2.ListModelsResponse(models=rows, model=self.models.current.model)

    def Load(self, request, context):
        self._authorize(context)
        try:
            result = self.models.load(request.model)
        except (ValueError, FileNotFoundError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return common_pb2.LoadModelResponse(**vars(result))

    def Rollback(self, request, context):
        self._authorize(context)
        try:
            result = self.models.rollback()
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return common_pb2.LoadModelResponse(**vars(result))


@dataclass
class StageSpec:
    """What a stage contributes to its server: its declaration, servicer and models."""

    stage: Stage
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    models: ModelManager

    @property
    def service_name(self) -> str:
        """The full gRPC service name, e.g. ``riveg.v1.VgService``."""
        return self.stage.service_name

    @property
    def backend(self) -> Backend:
        """The backend answering now (changes on a hot swap)."""
        return self.models.current

    @property
    def backend_name(self) -> str:
        """The registry key of the answering backend."""
        return self.models.backend_name


class StageServer:
    """One stage's gRPC server with health, reflection, model admin and graceful shutdown."""

    def __init__(self, spec: StageSpec, settings: Settings) -> None:
        self.spec = spec
        self.settings = settings
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc.workers),
            options=channel_options(settings),
            interceptors=[_CallContextInterceptor(spec.stage.name)],
        )
        spec.add_to_server(spec.servicer, self.server)
        common_pb2_grpc.add_ModelAdminServicer_to_server(
            _ModelAdminServicer(spec.models, settings.grpc), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                spec.service_name,
                "riveg.v1.ModelAdmin",
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port: int | None = None
        self._stopped = threading.Event()

    def _set_status(self, status: int) -> None:
        for name in ("", self.spec.service_name):
            self.health.set(name, status)

    def start(self, port: int | None = None, host: str | None = None, load: bool = True) -> int:
        """Bind (port 0 = any free port; host default ``[grpc] host``, loopback unless set),
        with TLS when the settings say so, start serving health, load the model, then SERVING."""
        bind_host = self.settings.grpc.host if host is None else host
        bind_port = self.settings.server_port(self.spec.stage.name) if port is None else port
        address = f"{bind_host}:{bind_port}"
        credentials = server_credentials(self.settings.grpc)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise RuntimeError(f"{self.spec.stage.name}: cannot bind {address}")
        self.server.start()
        log.info(
            "server started",
            stage=self.spec.stage.name,
            address=f"{bind_host}:{self.port}",
            tls="mutual" if self.settings.grpc.mtls else self.settings.grpc.tls,
        )
        if load:
            self.load_model()
        return self.port

    def load_model(self) -> None:
        """Load and warm the backend's model and mark the server SERVING."""
        started = time.perf_counter()
        stage = self.spec.stage.name
        try:
            warm(self.spec.backend)
        except Exception:
            metrics.MODEL_LOADS.labels(stage, "error").inc()
            raise
        metrics.MODEL_LOADS.labels(stage, "startup").inc()
        metrics.MODEL_LOAD_SECONDS.labels(stage).observe(time.perf_counter() - started)
        metrics.show_model(stage, self.spec.backend, self.spec.backend_name)
        self._set_status(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "model ready",
            stage=self.spec.stage.name,
            model=self.spec.backend.model,
            load_s=round(time.perf_counter() - started, 2),
        )

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls and let in-flight ones finish within grace."""
        if self._stopped.is_set():
            return
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(self.settings.grpc.shutdown_grace_s if grace is None else grace).wait()
        # The grace is over: calls still computing (a generation) are cut short, so that their
        # threads end and the process can exit.
        for backend in (self.spec.models.current, self.spec.models.previous):
            if backend is not None:
                backend.stop()
        if hasattr(self.spec.servicer, "close"):
            self.spec.servicer.close()
        self._stopped.set()
        log.info("server stopped", stage=self.spec.stage.name)

    def serve_forever(self) -> None:
        """Block until SIGTERM/SIGINT, then shut down gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        self._stopped.wait()
