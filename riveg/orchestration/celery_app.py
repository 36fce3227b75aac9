"""The Celery app: JSON only, one queue per stage, results in the result backend, task events on.

The app's configuration source is ``RIVEG_*`` (and ``RIVEG_CONFIG``), read when Celery first
needs it, so the module that ``celery -A riveg.orchestration.celery_app`` loads has the broker,
result backend, routes and serializers: ``celery -A riveg.orchestration.celery_app inspect
ping``, ``result``, ``events`` and Flower work without extra flags. A command that built its own
settings (flags, a TOML file) calls :func:`configure_app` with them first, so importing this
module never parses settings. Without a broker (embedded mode) tasks run eagerly in this
process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer

from riveg.core.config import Settings, get_settings
from riveg.core.stages import PIPELINE_QUEUE

STEP_QUEUES: dict[str, str] = {
    "store": PIPELINE_QUEUE,
    "knowledge": "llm",
    "mner": "mner",
    "expand": "llm",
    "ve": "ve",
    "vg": "vg",
    "seg": "seg",
    "assemble": PIPELINE_QUEUE,
}
"""Pipeline step -> queue: each stage's steps run on its queue, so its workers scale alone."""
STEPS: tuple[str, ...] = tuple(STEP_QUEUES)
"""The steps of one post, in order (knowledge only when enabled)."""


def task_name(step: str) -> str:
    """The Celery task name of a step: ``riveg.<step>``."""
    return f"riveg.{step}"


def queue_name(settings: Settings, name: str) -> str:
    """The broker queue of a stage (or "pipeline"): ``<queue_prefix>.<name>``."""
    return f"{settings.broker.queue_prefix}.{name}"


PUBLISH_RETRY_MAX_WAIT_S = 5.0
"""Longest wait between two tries of sending a message to the broker."""


def publish_retry_policy(retry_for_s: float) -> dict[str, float]:
    """Kombu's publish retry policy: waits of 0, 1, 2 ... capped at 5 s, for ``retry_for_s``."""
    retries, waited = 0, 0.0
    while waited < retry_for_s:
        waited += min(float(retries), PUBLISH_RETRY_MAX_WAIT_S)
        retries += 1
    return {"max_retries": retries, "interval_start": 0, "interval_step": 1,
            "interval_max": PUBLISH_RETRY_MAX_WAIT_S}  # fmt: skip


RECONNECT_MAX_WAIT_S = 2.0
"""Longest wait between two tries of a worker reconnecting to its broker."""


class PromptReconnectConsumer(Consumer):
    """Celery's worker consumer, reconnecting to a broker that restarts within about
    ``RECONNECT_MAX_WAIT_S`` of its return: kombu's default waits 2, 4, 6 ... up to 30 s
    between tries, so a worker came back up to 30 s after its broker (measured: 9 s after a
    5 s outage), and later still after longer ones."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=0.5, interval_step=0.5,
            interval_max=RECONNECT_MAX_WAIT_S,
        )  # fmt: skip
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection  # the class's own again


def worker_config() -> dict[str, Any]:
    """What only a worker sets: storing a task's state in the result backend (Redis) waits for
    a result backend that restarts (backoff up to 10 s), instead of failing the task; the
    consumer reconnects to a restarted broker promptly, and never freezes after it did."""
    return {
        "result_backend_always_retry": True,
        "result_backend_max_retries": float("inf"),
        "worker_consumer": f"{__name__}:PromptReconnectConsumer",
        # After a reconnection Celery lowers the prefetch count and raises it again from the
        # thread that acknowledges a task: in the thread pool that is a pool thread, sending
        # basic.qos on the connection the consumer thread is reading, and py-amqp is not
        # thread-safe; both waited for the same reply and the worker froze for good (seen
        # after a broker restart, with tasks running across it). We prefetch 1 per thread
        # anyway, so there is nothing to reduce.
        "worker_enable_prefetch_count_reduction": False,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings (distributed with a broker, else eager)."""
    config: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {
            task_name(step): {"queue": queue_name(settings, queue)}
            for step, queue in STEP_QUEUES.items()
        },
        "task_default_queue": queue_name(settings, PIPELINE_QUEUE),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": settings.pipeline.task_time_limit_s,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": 86400,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        # A broker that restarts: workers reconnect however long it takes (`riveg up` and
        # Kubernetes restart a worker that gives up, and its tasks would wait anyway).
        "broker_connection_max_retries": None,
        # Sending a message (a post's next step, a retry) rides out a broker restart for as
        # long as a step is retried, instead of failing the step after about a second.
        "task_publish_retry_policy": publish_retry_policy(settings.pipeline.retry_for_s),
        "worker_hijack_root_logger": False,
        # Our log handler writes to stderr: redirected into Celery's logger, every line of the
        # tasks was lost (the worker logged its banner and nothing else).
        "worker_redirect_stdouts": False,
    }
    if settings.embedded:
        config.update(
            broker_url="memory://",
            result_backend="cache+memory://",
            task_always_eager=True,
            # Errors stay in the eager result (a failed step still stops its chain), so that a
            # step's declared retries run in embedded mode too (at once: eager mode has no
            # countdown).
            task_eager_propagates=False,
            task_store_eager_result=False,
        )
    else:
        config.update(
            broker_url=settings.broker.url.get_secret_value(),  # type: ignore[union-attr]
            result_backend=settings.broker.result_backend.get_secret_value(),
            task_always_eager=False,
        )
    return config


class ConfigFromEnvironment(Mapping[str, Any]):
    """Celery's configuration for the settings of the environment, computed when Celery first
    reads it (as for ``celery -A``), not when this module is imported."""

    @cached_property
    def _values(self) -> dict[str, Any]:
        return celery_config(get_settings())

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


app = Celery("riveg", include=["riveg.orchestration.tasks"])
app.config_from_object(ConfigFromEnvironment())


def configure_app(settings: Settings | None = None) -> Celery:
    """Configure the app for the settings (default: from the environment) and return it."""
    app.config_from_object(celery_config(settings or get_settings()))
    return app
