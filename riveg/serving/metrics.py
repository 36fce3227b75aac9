"""Prometheus metrics of the stage servers (one set per process; the ``stage`` label tells the
servers of an embedded cluster apart)."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "riveg_stage_requests_total",
    "Stage server calls by RPC method and gRPC status code.",
    ["stage", "method", "code"],
)
LATENCY = Histogram(
    "riveg_stage_request_duration_seconds",
    "Time a stage server took to answer a call.",
    ["stage", "method"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge("riveg_stage_in_flight_requests", "Calls being answered now.", ["stage"])
MODEL_INFO = Gauge(
    "riveg_stage_model_info",
    "The model a stage server answers with (1 for the current one).",
    ["stage", "model", "backend", "device", "dtype"],
)
BATCH_SIZE = Histogram(
    "riveg_stage_batch_size",
    "Calls handed to the model together by a server's dynamic batcher.",
    ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
QUEUE_WAIT = Histogram(
    "riveg_stage_batch_queue_wait_seconds",
    "Time a call waited in the dynamic batcher's queue for its batch.",
    ["batcher"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
MODEL_LOADS = Counter(
    "riveg_stage_model_loads_total",
    "Model loads (start-up and hot swaps) by outcome.",
    ["stage", "outcome"],
)
MODEL_LOAD_SECONDS = Histogram(
    "riveg_stage_model_load_duration_seconds",
    "Time a model took to load and warm up.",
    ["stage"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)


def method_name(full_method: str) -> str:
    """``/riveg.v1.MnerService/Recognize`` -> ``Recognize`` (a bounded label value)."""
    return full_method.rsplit("/", 1)[-1] or "unknown"


def _info_labels(stage: str, backend: Any, backend_name: str) -> dict[str, str]:
    return {
        "stage": stage,
        "model": str(getattr(backend, "model", "")),
        "backend": backend_name,
        "device": str(getattr(backend, "device", "cpu")),
        "dtype": str(getattr(backend, "dtype", "") or ""),
    }


def show_model(stage: str, backend: Any, backend_name: str, replaced: Any = None,
               replaced_name: str = "") -> None:  # fmt: skip
    """Make ``backend`` the stage's model in ``riveg_stage_model_info`` (dropping the one it
    replaced)."""
    if replaced is not None:
        with contextlib.suppress(KeyError):
            MODEL_INFO.remove(*_info_labels(stage, replaced, replaced_name).values())
    MODEL_INFO.labels(**_info_labels(stage, backend, backend_name)).set(1)
