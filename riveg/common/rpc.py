"""gRPC server and client helpers shared by the five stage services.

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

from riveg.common.backend import Backend, InvalidInput
from riveg.common.config import Settings
from riveg.common.logging import get_logger
from riveg.common.storage import ObjectNotFound
from riveg.modelstore.manager import ModelManager, warm
from riveg.v1 import common_pb2, common_pb2_grpc

JOB_ID_KEY = "x-job-id"
log = get_logger("riveg.rpc")


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """Message-size limits used on both ends."""
    limit = settings.grpc_max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def _status_for(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ObjectNotFound):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.INTERNAL


class _CallContextInterceptor(grpc.ServerInterceptor):
    """Binds the job id to the logs, refuses calls whose deadline has passed, maps errors."""

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behaviour = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            metadata = dict(context.invocation_metadata() or ())
            job_id = metadata.get(JOB_ID_KEY, "")
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(job_id=job_id, rpc=method):
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed on arrival")
                try:
                    response = behaviour(request, context)
                except Exception as exc:
                    if context.code() is not None:  # already aborted by the servicer
                        raise
                    code = _status_for(exc)
                    log.warning("rpc failed", code=code.name, error=str(exc))
                    context.abort(code, f"{type(exc).__name__}: {exc}")
                log.info("rpc done", ms=round((time.perf_counter() - started) * 1000, 1))
                return response

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
    """Current, List, Load and Rollback over the stage's ModelManager."""

    def __init__(self, models: ModelManager) -> None:
        self.models = models

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
        try:
            result = self.models.load(request.model)
        except (ValueError, FileNotFoundError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return common_pb2.LoadModelResponse(**vars(result))

    def Rollback(self, request, context):
        try:
            result = self.models.rollback()
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return common_pb2.LoadModelResponse(**vars(result))


@dataclass
class StageSpec:
    """What a stage contributes to its server: servicer, how to add it, its full service name."""

    stage: str
    service_name: str  # e.g. "riveg.v1.VgService"
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]
    models: ModelManager

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
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers),
            options=channel_options(settings),
            interceptors=[_CallContextInterceptor()],
        )
        spec.add_to_server(spec.servicer, self.server)
        common_pb2_grpc.add_ModelAdminServicer_to_server(
            _ModelAdminServicer(spec.models), self.server
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

    def start(self, port: int | None = None, host: str = "0.0.0.0", load: bool = True) -> int:
        """Bind (port 0 = any free port), start serving health, load the model, then SERVING."""
        bind_port = self.settings.server_port(self.spec.stage) if port is None else port
        self.port = self.server.add_insecure_port(f"{host}:{bind_port}")
        if self.port == 0:
            raise RuntimeError(f"{self.spec.stage}: cannot bind {host}:{bind_port}")
        self.server.start()
        log.info("server started", stage=self.spec.stage, port=self.port)
        if load:
            self.load_model()
        return self.port

    def load_model(self) -> None:
        """Load and warm the backend's model and mark the server SERVING."""
        started = time.perf_counter()
        warm(self.spec.backend)
        self._set_status(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "model ready",
            stage=self.spec.stage,
            model=self.spec.backend.model,
            load_s=round(time.perf_counter() - started, 2),
        )

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls and let in-flight ones finish within grace."""
        if self._stopped.is_set():
            return
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(self.settings.shutdown_grace_s if grace is None else grace).wait()
        self._stopped.set()
        log.info("server stopped", stage=self.spec.stage)

    def serve_forever(self) -> None:
        """Block until SIGTERM/SIGINT, then shut down gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        self._stopped.wait()


class StageCallError(RuntimeError):
    """A stage RPC failed; carries the stage, the gRPC status code and the server's message."""

    def __init__(self, stage: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{stage} stage failed ({code.name}): {details}")
        self.stage = stage
        self.code = code
        self.details = details

    @property
    def is_input_error(self) -> bool:
        """True when the request itself was bad (retrying cannot help)."""
        return self.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


class StageClient:
    """A channel to one stage server with its stub, the job id sent as metadata."""

    def __init__(self, stage: str, addr: str, stub_class: type, settings: Settings) -> None:
        self.stage = stage
        self.addr = addr
        self.settings = settings
        self.channel = grpc.insecure_channel(addr, options=channel_options(settings))
        self.stub = stub_class(self.channel)
        self.admin = common_pb2_grpc.ModelAdminStub(self.channel)

    def call(self, method: str, request: Any, job_id: str = "", timeout: float | None = None):
        """Invoke a unary method; StageCallError on failure."""
        try:
            return getattr(self.stub, method)(
                request,
                timeout=timeout or self.settings.rpc_timeout_s,
                metadata=((JOB_ID_KEY, job_id),),
            )
        except grpc.RpcError as exc:
            raise StageCallError(self.stage, exc.code(), exc.details() or "") from exc

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


class StageServicer:
    """Base of the stage servicers: the backend that answers and the store images come from.

    ``backend`` is the model answering now; a handler that uses it twice should read it once
    into a local, so a hot swap in between cannot mix two models in one response.
    """

    def __init__(self, models: ModelManager | Backend, store: Any) -> None:
        if isinstance(models, Backend):
            models = ModelManager("", None, None, models, "")  # type: ignore[arg-type]
        self.models = models
        self.store = store

    @property
    def backend(self) -> Backend:
        """The backend answering now."""
        return self.models.current


def build_stage_spec(
    stage: str,
    service_name: str,
    registry: Any,
    servicer_class: Callable[[Backend, Any], Any],
    add_to_server: Callable[[Any, grpc.Server], None],
    settings: Settings,
    store: Any,
) -> StageSpec:
    """A stage's spec with the model its settings name: ``RIVEG_<STAGE>_MODEL`` (``name@version``
    from the model store, or a builtin backend) when set, else ``RIVEG_<STAGE>_BACKEND``."""
    models = ModelManager.from_settings(stage, registry, settings, store)
    return StageSpec(
        stage=stage,
        service_name=service_name,
        servicer=servicer_class(models, store),
        add_to_server=add_to_server,
        models=models,
    )
