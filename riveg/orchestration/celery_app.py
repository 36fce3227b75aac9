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

from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

from celery import Celery

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
