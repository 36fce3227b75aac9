"""The AMQP intake, for producers already on RabbitMQ: posts as JSON messages on the durable
queue ``<queue_prefix>.intake``, checked against ``schemas/post.schema.json`` and taken like a
``POST /v1/posts``. A message that fails (not JSON, not the schema, refused) goes to the queue
``<queue_prefix>.intake.dead`` with the reason in its ``x-riveg-error`` header; none is dropped.
Finished jobs are published to the topic exchange ``<queue_prefix>.results``
(:mod:`riveg.orchestration.notify`; ``schemas/job.schema.json``).
"""

from __future__ import annotations

import json
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from kombu import Connection, Exchange, Message, Queue
from kombu.mixins import ConsumerMixin

from riveg.core.config import Settings
from riveg.core.logging import get_logger
from riveg.gateway.intake import Intake, PostIn, Refused
from riveg.orchestration.notify import results_exchange, send_callback

log = get_logger("riveg.intake")
SCHEMAS = Path(__file__).with_name("schemas")
ERROR_HEADER = "x-riveg-error"
BACKLOG_WAIT_S = 5.0


def post_schema() -> dict[str, Any]:
    """The JSON Schema of an intake message (and of a ``POST /v1/posts`` JSON body)."""
    schema = PostIn.model_json_schema()
    schema.update({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://riveg.example/schemas/post.schema.json",
        "title": "Post",
        "oneOf": [{"required": [name]} for name in ("image_b64", "image_url", "image_key")],
    })  # fmt: skip
    return schema


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a finished job as published to the results exchange and POSTed to
    callbacks."""
    nullable = {"type": ["string", "null"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://riveg.example/schemas/job.schema.json",
        "title": "Job",
        "type": "object",
        "required": ["job_id", "id", "status", "submitted_at", "finished_at"],
        "properties": {
            "job_id": {"type": "string"},
            "id": {"type": "string", "description": "the post's id"},
            "status": {"enum": ["done", "failed"]},
            "step": nullable,
            "error": {**nullable, "description": "why the job failed"},
            "submitted_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "result": {
                "type": "object",
                "description": "the pipeline's result (when done)",
                "required": ["job_id", "id", "text", "entities", "models"],
            },
        },
    }


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / "post.schema.json").read_text()))


def schema_errors(document: Any) -> str | None:
    """The first reason ``document`` is not a post (one line), or None."""
    error = next(iter(sorted(_validator().iter_errors(document), key=str)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the message"
    if error.validator == "oneOf" and not error.absolute_path:
        return "give exactly one of image_b64, image_url, image_key"
    return f"{where}: {error.message[:300]}"


def intake_queues(settings: Settings) -> tuple[Queue, Queue, Exchange]:
    """The intake queue, its dead-letter queue and the dead-letter exchange."""
    prefix = settings.broker.queue_prefix
    dead_exchange = Exchange(f"{prefix}.intake.dead", type="direct", durable=True)
    intake = Queue(f"{prefix}.intake", Exchange(""), routing_key=f"{prefix}.intake",
                   durable=True)  # fmt: skip
    dead = Queue(f"{prefix}.intake.dead", dead_exchange, routing_key="dead", durable=True)
    return intake, dead, dead_exchange


class IntakeConsumer(ConsumerMixin):
    """Takes posts from the intake queue (one at a time, acknowledged once taken or
    dead-lettered); waits while the backlog is full."""

    def __init__(self, connection: Connection, intake: Intake) -> None:
        self.connection = connection
        self.intake = intake
        self.queue, self.dead, self.dead_exchange = intake_queues(intake.settings)

    def get_consumers(self, consumer_class: Any, channel: Any) -> list[Any]:
        self.dead.bind(channel).declare()
        return [consumer_class(queues=[self.queue], callbacks=[self.on_message],
                               accept=["json", "application/json"], prefetch_count=1)]  # fmt: skip

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """A body kombu cannot decode (not JSON, a content type not accepted): dead-lettered."""
        self._dead(message, f"cannot decode the message ({message.content_type}): {exc}")

    def on_message(self, body: Any, message: Message) -> None:
        """Take one post, or dead-letter it with the reason."""
        document = body
        if isinstance(body, (bytes, str)):
            try:
                document = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._dead(message, f"not JSON: {exc}")
                return
        reason = schema_errors(document)
        if reason is not None:
            self._dead(message, reason)
            return
        try:
            accepted = self.intake.accept(PostIn.model_validate(document))
        except Refused as exc:
            if exc.status == 429:  # the backlog is full: wait, and let the broker keep it
                time.sleep(BACKLOG_WAIT_S)
                message.requeue()
                return
            self._dead(message, f"{exc.field or 'post'}: {exc.message}")
            return
        except ValueError as exc:  # the pydantic check beyond the schema
            self._dead(message, str(exc).splitlines()[0])
            return
        except Exception as exc:  # the store or the job records: this post's error, not the
            self._dead(message, f"not taken: {type(exc).__name__}: {exc}")  # consumer's end
            return
        log.info("intake post taken", post_id=document.get("id"),
                 job_id=accepted.record["job_id"], new=accepted.created)  # fmt: skip
        message.ack()

    def _dead(self, message: Message, reason: str) -> None:
        producer = self.connection.Producer()
        producer.publish(
            message.body,
            exchange=self.dead_exchange,
            routing_key="dead",
            headers={**(message.headers or {}), ERROR_HEADER: reason},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            declare=[self.dead],
            delivery_mode=2,
        )
        message.ack()
        log.warning("intake message dead-lettered", reason=reason)


class CallbackConsumer(ConsumerMixin):
    """Delivers the callbacks of finished jobs: reads the results exchange through the durable
    queue ``<queue_prefix>.callbacks`` (shared by the gateway replicas, so each callback is sent
    by one of them) and acknowledges a job once its callback was delivered or given up."""

    def __init__(self, connection: Connection, intake: Intake) -> None:
        self.connection = connection
        self.intake = intake
        settings = intake.settings
        self.queue = Queue(f"{settings.broker.queue_prefix}.callbacks", results_exchange(settings),
                           routing_key="job.#", durable=True)  # fmt: skip

    def get_consumers(self, consumer_class: Any, channel: Any) -> list[Any]:
        return [consumer_class(queues=[self.queue], callbacks=[self.on_message],
                               accept=["json"], prefetch_count=1)]  # fmt: skip

    def on_message(self, body: Any, message: Message) -> None:
        """Send the job's callback (when it has one), then acknowledge."""
        try:
            job_id = str(body.get("job_id", "")) if isinstance(body, dict) else ""
            record = self.intake.runtime.jobs.get(job_id) or {}
        except Exception as exc:  # the job records are unreachable: try again a little later
            log.error("cannot read the job record for its callback", error=str(exc))
            time.sleep(1.0)
            message.requeue()
            return
        if record.get("callback_url"):
            send_callback(self.intake.settings, record, body)  # logs its own failure
        message.ack()

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        log.error("undecodable message on the results exchange", error=str(exc))
        message.ack()


def start_consumers(settings: Settings, intake: Intake, take_posts: bool) -> list[ConsumerMixin]:
    """The callback sender and (when ``take_posts``) the intake, each on a daemon thread;
    stop them with ``consumer.should_stop = True``."""
    url = settings.broker.url.get_secret_value()  # type: ignore[union-attr]
    consumers: list[ConsumerMixin] = [CallbackConsumer(Connection(url), intake)]
    if take_posts:
        consumers.append(IntakeConsumer(Connection(url), intake))
    for consumer in consumers:
        name = f"riveg-{type(consumer).__name__}"
        threading.Thread(target=consumer.run, name=name, daemon=True).start()
    return consumers
