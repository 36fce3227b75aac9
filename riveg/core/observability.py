"""Metrics and tracing of a process: a Prometheus metrics server (``prometheus-client``) and
OpenTelemetry tracing with the gRPC and Celery instrumentations, both chosen by the settings.

Tracing off (``RIVEG_TRACING_EXPORTER=none``, the default) installs nothing: no provider, no
instrumentation, so the code's spans are the API's no-op spans. On, every gRPC call (client and
server) and every Celery task gets a span, the trace context travelling in gRPC metadata and
Celery message headers, so that one post is one trace across processes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import start_http_server

from riveg.core.config import ConfigError, Settings
from riveg.core.logging import get_logger

log = get_logger("riveg.observability")
tracer = trace.get_tracer("riveg")
_tracing_lock = threading.Lock()
_provider: TracerProvider | None = None


def start_metrics_server(settings: Settings, port: int | None = None) -> int | None:
    """Serve this process' Prometheus metrics at ``http://<[metrics] host>:<port>/metrics``
    (``port`` else ``RIVEG_METRICS_PORT``; 0 = any free port); the port, or None when unset."""
    port = settings.metrics.port if port is None else port
    if port is None:
        return None
    try:
        server, _ = start_http_server(port, addr=settings.metrics.host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.metrics.host}:{port}: {exc.strerror}"
        ) from None
    bound = server.server_port
    log.info("metrics served", url=f"http://{settings.metrics.host}:{bound}/metrics")
    return bound


def _exporter(settings: Settings) -> Any:
    if settings.tracing.exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    return OTLPSpanExporter(endpoint=settings.tracing.endpoint, timeout=10)


def setup_tracing(settings: Settings, service: str) -> bool:
    """Install tracing for this process as ``service`` (e.g. ``riveg-serve-mner``) when the
    settings ask for it: a provider exporting in batches, gRPC and Celery instrumented. Call it
    before any channel, server or task is created. Whether tracing is on."""
    global _provider
    if settings.tracing.exporter == "none":
        return False
    with _tracing_lock:
        if _provider is not None:
            return True
        _provider = TracerProvider(
            resource=Resource.create({"service.name": service}),
            sampler=ParentBased(TraceIdRatioBased(settings.tracing.sample_ratio)),
        )
        _provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        trace.set_tracer_provider(_provider)
        GrpcInstrumentorServer().instrument()
        GrpcInstrumentorClient().instrument()
        CeleryInstrumentor().instrument()
    log.info("tracing on", service=service, exporter=settings.tracing.exporter)
    return True


def flush_tracing() -> None:
    """Export the spans still buffered (before a process exits)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=10_000)


@contextmanager
def post_span(name: str, job_id: str, post_id: str) -> Iterator[None]:
    """A span named ``name`` with the job and post ids as attributes (a no-op when off)."""
    with tracer.start_as_current_span(name, attributes={"riveg.job_id": job_id,
                                                        "riveg.post_id": post_id}):  # fmt: skip
        yield


def tag_current_span(**attributes: str) -> None:
    """Put ``riveg.<name>`` attributes on the span in progress (nothing when tracing is off)."""
    span = trace.get_current_span()
    if span.is_recording():
        for name, value in attributes.items():
            span.set_attribute(f"riveg.{name}", value)
