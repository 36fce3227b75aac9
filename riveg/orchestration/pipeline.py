"""The per-post chain, and submitting posts to it (embedded: run now; distributed: enqueue)."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import chain
from celery.result import AsyncResult, EagerResult
from kombu.exceptions import OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from riveg.core.images import image_content_type
from riveg.core.limits import check_image_bytes, check_text
from riveg.core.logging import get_logger
from riveg.core.observability import post_span
from riveg.core.storage import ObjectStore, StoreUnavailable
from riveg.orchestration.celery_app import STEPS
from riveg.orchestration.jobs import new_record, now, result_key
from riveg.orchestration.runtime import Runtime
from riveg.orchestration.tasks import TASKS, PostError

__all__ = ["STEPS", "JobFailed", "JobResult", "Submission", "build_chain", "submit_post"]
log = get_logger("riveg.pipeline")


def build_chain(state: dict[str, Any], knowledge: bool = False) -> chain:
    """store -> (knowledge) -> mner -> expand -> ve -> vg -> seg -> assemble, for one post."""
    steps = [TASKS[name] for name in STEPS if knowledge or name != "knowledge"]
    return chain(steps[0].s(state), *(step.s() for step in steps[1:]))


@dataclass
class Submission:
    """A post handed to the pipeline: its id, job id and the chain's result handle."""

    post_id: str
    job_id: str
    result: JobResult | EagerResult | _Failed
    task: AsyncResult | None = None
    """With a broker: Celery's handle of the chain's last task (its results in the result
    backend); the post's outcome is read through ``result``, which outlives the backend."""

    def get(self, timeout: float | None = None) -> dict[str, Any]:
        """The post's result; raises the failing step's error (e.g. PostError)."""
        return self.result.get(timeout=timeout, propagate=True)


def submit_post(
    runtime: Runtime,
    text: str,
    image_bytes: bytes,
    post_id: str | None = None,
    knowledge: bool | None = None,
    image_id: str | None = None,
    job_id: str | None = None,
    image_key: str | None = None,
) -> Submission:
    """Upload the image to the object store and start the post's chain.

    ``image_id`` names the image in a benchmark (e.g. ``17_06_1234``): the knowledge step then
    uses its released caption when the LLM service has one.

    In embedded mode (eager Celery) the chain has run when this returns; in distributed mode it
    is enqueued on the broker. Text that is empty, too long or not valid Unicode, and image
    bytes over the byte limit, are refused here (InvalidInput), before anything is stored; the
    ``store`` step decodes the image within the limits.

    ``job_id``: a job the caller has recorded already (the gateway claims the post id first);
    otherwise a new job is recorded here. ``image_key``: the image is in the store already
    (``image_bytes`` is then ignored). Images are stored once per content (by SHA-256).
    """
    limits = runtime.settings.limits
    check_text(text or "", limits.max_text_chars)
    if image_key is None:
        check_image_bytes(len(image_bytes), limits.max_image_bytes)
        image_key = store_image(runtime.store, image_bytes)
    if job_id is None:
        job_id = uuid.uuid4().hex
        record = new_record(job_id, post_id or job_id, image_key=image_key)
        runtime.jobs.update(job_id, **record)
        runtime.jobs.link(post_id or job_id, job_id, replace=True)  # the post's latest job
    else:  # recorded by the caller (the gateway), its image key included
        record = runtime.jobs.get(job_id) or {}
    state = {
        "id": post_id or job_id,
        "job_id": job_id,
        "submitted_at": record.get("submitted_at") or now(),
        "text": text,
        "image": {"key": image_key, "width": 0, "height": 0},
        "entities": [],
        "models": {},
        "timings_ms": {},
    }
    if image_id:
        state["image_id"] = image_id
    use_knowledge = runtime.settings.pipeline.knowledge if knowledge is None else knowledge
    workflow = build_chain(state, knowledge=use_knowledge)
    # The post's trace: this span is the parent of every task and stage call of its chain.
    with post_span("riveg.submit", job_id, state["id"]):
        if runtime.settings.embedded:
            try:
                outcome = workflow.apply()
            except PostError as exc:
                outcome = _Failed(exc)
            return Submission(state["id"], job_id, outcome)
        try:
            task = workflow.apply_async()
        except Exception as exc:  # never enqueued: its record must not look in flight
            _abandon(runtime, job_id, exc)
            raise
        return Submission(state["id"], job_id, JobResult(runtime, state["id"], job_id), task)


TRANSIENT_SUBMIT_ERRORS: tuple[type[Exception], ...] = (
    StoreUnavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
)
"""What a dependency that is down or restarting raises while a post is submitted."""


def submit_patiently(runtime: Runtime, *args: Any, **kwargs: Any) -> Submission:
    """:func:`submit_post`, tried again while the object store, the job records or the broker
    is down (jittered backoff up to 10 s, for ``RIVEG_PIPELINE_RETRY_FOR_S``): a post that
    `riveg batch` or `riveg analyze` submits during an outage waits for it instead of failing.
    Each try that got as far as a job record left it failed ("not enqueued"), never in flight.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(TRANSIENT_SUBMIT_ERRORS),
        stop=stop_after_delay(runtime.settings.pipeline.retry_for_s),
        wait=wait_random_exponential(multiplier=0.5, max=10),
        before_sleep=_log_retry,
        reraise=True,
    )
    return retrying(submit_post, runtime, *args, **kwargs)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("submission failed, trying again", attempt=state.attempt_number,
                error=f"{type(error).__name__}: {error}")  # fmt: skip


def _abandon(runtime: Runtime, job_id: str, error: Exception) -> None:
    """Mark a job that could not be enqueued failed (best effort: the records may be down)."""
    try:
        runtime.jobs.update(job_id, status="failed", finished_at=now(),
                            error=f"not enqueued: {type(error).__name__}: {error}")  # fmt: skip
    except Exception as exc:
        log.warning("cannot mark the job failed", job_id=job_id, error=str(exc))


def stored_result(store: ObjectStore, post_id: str) -> dict[str, Any] | None:
    """The post's result in the store (one per post id), None when there is none yet."""
    key = result_key(post_id)
    return store.get_json(key) if store.exists(key) else None


def store_image(store: ObjectStore, data: bytes) -> str:
    """Keep an image under its content hash with its content type (sniffed from its first
    bytes); an image submitted again is stored once. Returns its key."""
    key = f"images/sha256/{hashlib.sha256(data).hexdigest()}"
    if not store.exists(key):
        store.put_bytes(key, data, image_content_type(data))
    return key


class _Failed:
    """An eager chain's failure, raised again on get() like an AsyncResult does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def ready(self) -> bool:
        return True

    def get(self, timeout: float | None = None, propagate: bool = True) -> dict[str, Any]:
        raise self.error


class JobFailed(PostError):
    """The post's job ended failed; the message is the error its record holds."""


class JobResult:
    """A distributed post's outcome, read where it outlives any one server: its job record
    (Redis) says done or failed, and the result itself is read from the object store. When the
    record cannot be read (Redis restarting, or restarted without its data), the store alone
    says whether this job's result is there. :meth:`ready` never raises: a client keeps waiting
    through outages and ends with the post's outcome or its own timeout."""

    def __init__(self, runtime: Runtime, post_id: str, job_id: str, poll_s: float = 0.5) -> None:
        self.runtime = runtime
        self.post_id = post_id
        self.job_id = job_id
        self.poll_s = poll_s
        self._outcome: dict[str, Any] | JobFailed | None = None
        self._checked = 0.0
        self._warned = False

    def ready(self) -> bool:
        """Whether the post has ended (asks at most every ``poll_s`` seconds)."""
        if self._outcome is None and time.monotonic() - self._checked >= self.poll_s:
            self._checked = time.monotonic()
            self._outcome = self._look()
        return self._outcome is not None

    def get(self, timeout: float | None = None, propagate: bool = True) -> dict[str, Any]:
        """The result once the post has ended; JobFailed if it failed, TimeoutError after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"post {self.post_id!r} (job {self.job_id}) has not ended "
                                   f"after {timeout:g} s")  # fmt: skip
            time.sleep(min(self.poll_s, 0.1))
        if isinstance(self._outcome, JobFailed):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def _look(self) -> dict[str, Any] | JobFailed | None:
        try:
            record = self.runtime.jobs.get(self.job_id)
        except Exception as exc:  # Redis down: the store can still say
            self._warn(f"job records unreachable ({type(exc).__name__}); reading the store")
            record = None
        try:
            if record is not None and record.get("status") == "failed":
                return JobFailed(str(record.get("error") or "failed"))
            if record is not None and record.get("status") != "done":
                return None
            result = self._stored_result(any_job=record is not None)
            if result is None and record is not None:  # done, but not readable yet
                self._warn("the job is done but its result is not in the store yet")
            return result
        except Exception as exc:  # the store is down: ask again later
            self._warn(f"the object store is unreachable ({type(exc).__name__})")
            return None

    def _stored_result(self, any_job: bool) -> dict[str, Any] | None:
        """The post's stored result: this job's, or (``any_job``: the record says done) the
        post's latest, as the result key holds one result per post."""
        result = stored_result(self.runtime.store, self.post_id)
        return result if result and (any_job or result.get("job_id") == self.job_id) else None

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message, post_id=self.post_id, job_id=self.job_id)
