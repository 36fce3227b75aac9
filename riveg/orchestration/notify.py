"""When a job ends: its record updated, its callback delivered, its outcome published.

The callback is a POST of the job (with the result, or the error) to the post's
``callback_url``, signed ``X-Riveg-Signature: sha256=<HMAC-SHA256 of timestamp + "." + body>``
with ``RIVEG_GATEWAY_CALLBACK_SECRET`` and retried with exponential backoff (tenacity). With a
broker, the same document is published to the topic exchange ``<queue_prefix>.results`` with
the routing key ``job.done`` or ``job.failed``, for downstream consumers to bind to; the
gateways consume it (queue ``<queue_prefix>.callbacks``) and deliver the callbacks.
Deliveries run on a small thread pool so that the step that ended the job is not held up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
from kombu import Connection, Exchange, Queue
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from riveg.core.config import Settings
from riveg.core.logging import get_logger
from riveg.core.network import check_outbound_url
from riveg.orchestration import metrics
from riveg.orchestration.jobs import JobStore, Record, now

log = get_logger("riveg.notify")
SIGNATURE_HEADER = "X-Riveg-Signature"
TIMESTAMP_HEADER = "X-Riveg-Timestamp"
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="riveg-notify")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value of a callback body: ``sha256=<hex>``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, max_age_s: float | None = 300.0
) -> bool:
    """What a receiver runs: whether ``signature`` is the sender's for this body, signed at most
    ``max_age_s`` seconds ago (a replayed old callback fails; None = any age)."""
    if max_age_s is not None:
        try:
            if abs(time.time() - int(timestamp)) > max_age_s:
                return False
        except ValueError:
            return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return isinstance(exc, httpx.TransportError)


def deliver_callback(url: str, document: dict[str, Any], settings: Settings) -> int:
    """POST the document to url (signed when a secret is set), retried with backoff on network
    errors, 408, 429 and 5xx; returns the receiver's status code."""
    gateway = settings.gateway
    target = check_outbound_url(url, gateway.allowed_hosts)
    body = json.dumps(document, ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp}
    if gateway.callback_secret is not None:
        headers[SIGNATURE_HEADER] = sign(
            gateway.callback_secret.get_secret_value(), timestamp, body
        )

    @retry(
        stop=stop_after_attempt(gateway.callback_attempts),
        wait=wait_exponential(multiplier=1, max=60),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )
    def post() -> int:
        with httpx.Client(timeout=gateway.url_timeout_s) as http:
            response = http.post(
                target.url,
                content=body,
                headers={**headers, **target.headers},
                extensions=target.extensions,
            )
        response.raise_for_status()
        return response.status_code

    return post()


def results_exchange(settings: Settings) -> Exchange:
    """The topic exchange finished jobs are published to: ``<queue_prefix>.results``."""
    return Exchange(f"{settings.broker.queue_prefix}.results", type="topic", durable=True)


def publish_outcome(settings: Settings, document: dict[str, Any]) -> None:
    """Publish a finished job to the results exchange (routing key ``job.<status>``)."""
    url = settings.broker.url.get_secret_value()  # type: ignore[union-attr]
    exchange = results_exchange(settings)
    with Connection(url, connect_timeout=10) as connection:
        producer = connection.Producer(serializer="json")
        producer.publish(
            document,
            exchange=exchange,
            routing_key=f"job.{document['status']}",
            declare=[exchange],
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 1, "interval_step": 2},
        )


def publish_dead(settings: Settings, state: dict[str, Any], reason: str) -> None:
    """Keep a poison post's state on the durable queue ``<queue_prefix>.dead`` with the reason
    in its ``x-riveg-error`` header, for an operator to look at."""
    url = settings.broker.url.get_secret_value()  # type: ignore[union-attr]
    name = f"{settings.broker.queue_prefix}.dead"
    exchange = Exchange(name, type="direct", durable=True)
    queue = Queue(name, exchange, routing_key="dead", durable=True)
    with Connection(url, connect_timeout=10) as connection:
        connection.Producer(serializer="json").publish(
            state, exchange=exchange, routing_key="dead", declare=[queue], delivery_mode=2,
            headers={"x-riveg-error": reason}, retry=True,
        )  # fmt: skip


def job_document(record: Record, result: dict[str, Any] | None) -> dict[str, Any]:
    """A job as the API, the callbacks and the results exchange show it."""
    document = {key: record.get(key) for key in ("job_id", "id", "status", "step", "error",
                                                 "submitted_at", "finished_at")}  # fmt: skip
    if result is not None:
        document["result"] = result
    return document


def send_callback(settings: Settings, record: Record, document: dict[str, Any]) -> None:
    """Deliver the job's callback, if it has one; a failure is logged, never raised."""
    url = record.get("callback_url")
    if not url:
        return
    try:
        code = deliver_callback(url, document, settings)
        log.info("callback delivered", job_id=record["job_id"], status=code)
    except Exception as exc:  # a receiver's failure is the job's record's, never the sender's
        log.error("callback failed", job_id=record["job_id"], error=f"{type(exc).__name__}: {exc}")


def _notify(settings: Settings, record: Record, result: dict[str, Any] | None) -> None:
    """Embedded: deliver the callback from here. With a broker: publish the outcome; the
    gateways consume it and deliver the callbacks (only they reach out to the web)."""
    document = job_document(record, result)
    if settings.embedded:
        send_callback(settings, record, document)
        return
    try:
        publish_outcome(settings, document)
    except Exception as exc:  # the result is stored either way; say so and go on
        log.error("publishing the outcome failed", job_id=record["job_id"], error=str(exc))


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def finish_job(
    settings: Settings,
    jobs: JobStore,
    job_id: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    result_key: str | None = None,
) -> Future:
    """Record the job's end (done with its result, or failed with the error) and notify."""
    fields: dict[str, Any] = {"finished_at": now(), "step": None}
    if error is None:
        fields.update(status="done", result_key=result_key, error=None)
    else:
        fields.update(status="failed", error=error)
    if not jobs.update(job_id, **fields):  # it had ended already (a redelivered step)
        log.warning("job ended already; not notified again", job_id=job_id)
        done: Future = Future()
        done.set_result(None)
        return done
    record = jobs.get(job_id) or {"job_id": job_id, **fields}
    outcome = fields["status"]
    metrics.POSTS_FINISHED.labels(outcome).inc()
    if record.get("submitted_at"):
        took = _seconds_between(record["submitted_at"], fields["finished_at"])
        metrics.POST_SECONDS.labels(outcome).observe(max(took, 0.0))
    return _pool.submit(_notify, settings, record, result)
