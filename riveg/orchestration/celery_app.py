"""The Celery app: JSON only, one queue per stage, results in the result backend.

Embedded mode runs tasks eagerly in this process (in-memory broker and backend); distributed mode
uses ``RIVEG_BROKER_URL`` (RabbitMQ) and ``RIVEG_RESULT_BACKEND`` (Redis).
"""

from __future__ import annotations

from celery import Celery

from riveg import STAGES
from riveg.common.config import Settings, get_settings

QUEUE_NAMES: tuple[str, ...] = (*STAGES, "pipeline")

# Task name -> queue name. Each stage's tasks go to that stage's queue so its workers scale alone.
ROUTES: dict[str, str] = {
    "riveg.store": "pipeline",
    "riveg.knowledge": "llm",
    "riveg.mner": "mner",
    "riveg.expand": "llm",
    "riveg.ve": "ve",
    "riveg.vg": "vg",
    "riveg.seg": "seg",
    "riveg.assemble": "pipeline",
}


def queue_name(settings: Settings, name: str) -> str:
    """The broker queue of a stage (or "pipeline"): ``<queue_prefix>.<name>``."""
    return f"{settings.queue_prefix}.{name}"


app = Celery("riveg", include=["riveg.orchestration.tasks"])


def configure_app(settings: Settings | None = None) -> Celery:
    """Configure the app for the settings' mode and return it."""
    settings = settings or get_settings()
    common = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {task: {"queue": queue_name(settings, q)} for task, q in ROUTES.items()},
        "task_default_queue": queue_name(settings, "pipeline"),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": settings.task_time_limit_s,
        "worker_prefetch_multiplier": 1,
        "result_expires": 86400,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.embedded:
        app.conf.update(
            broker_url="memory://",
            result_backend="cache+memory://",
            task_always_eager=True,
            task_eager_propagates=True,
            task_store_eager_result=False,
            **common,
        )
    else:
        app.conf.update(
            broker_url=settings.broker_url,
            result_backend=settings.result_backend,
            task_always_eager=False,
            **common,
        )
    return app
