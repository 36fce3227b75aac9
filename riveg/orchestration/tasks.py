"""One small, idempotent Celery task per pipeline step, all of one base class.

Every task takes the post's JSON state and returns it updated; only object keys travel, never
pixels or mask bytes. Steps: store -> (knowledge) -> mner -> expand -> ve -> vg -> seg -> assemble.
Retries are declared on :class:`StepTask` (Celery's ``autoretry_for`` with exponential, jittered,
capped backoff), not written around the calls.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from celery import Task, states
from celery.exceptions import Ignore, Retry

from riveg.core.config import RETRY_BACKOFF_MAX_S
from riveg.core.errors import InvalidInput
from riveg.core.images import decode_image, mask_to_rle, png_mask
from riveg.core.limits import check_text
from riveg.core.logging import get_logger
from riveg.core.observability import tag_current_span
from riveg.core.storage import StoreUnavailable
from riveg.orchestration import metrics
from riveg.orchestration.celery_app import STEPS, app, task_name
from riveg.orchestration.jobs import now, result_key
from riveg.orchestration.notify import finish_job, publish_dead
from riveg.orchestration.runtime import Runtime, get_runtime
from riveg.serving.client import StageInputError, TransientStageError, time_budget
from riveg.serving.messages import (
    box_from_proto,
    box_to_proto,
    entity_from_proto,
    entity_to_proto,
    image_ref,
)
from riveg.v1 import common_pb2, llm_pb2, mner_pb2, seg_pb2, ve_pb2, vg_pb2

State = dict[str, Any]
log = get_logger("riveg.tasks")


class PostError(Exception):
    """The post cannot be processed as given (bad image, empty text, ...); never retried."""


class StepTask(Task):
    """Base of every pipeline step: declared retries, one log line per start and end, the step's
    time in the state, and post errors told apart from failures.

    A stage call that fails with a transient gRPC code (UNAVAILABLE, DEADLINE_EXCEEDED,
    RESOURCE_EXHAUSTED), or an object store that is unreachable, is retried for
    ``RIVEG_PIPELINE_RETRY_FOR_S`` (or ``RIVEG_PIPELINE_MAX_RETRIES`` times), waiting a random
    time up to 1, 2, 4, ... seconds (capped at ``retry_backoff_max``); then the post fails with
    that error. A bad post fails at once with :class:`PostError` (``throws``: an
    expected outcome, logged without a traceback).
    """

    abstract = True
    step: str = ""
    autoretry_for = (TransientStageError, StoreUnavailable)
    retry_backoff = 1
    retry_backoff_max = int(RETRY_BACKOFF_MAX_S)
    retry_jitter = True
    throws = (PostError,)
    acks_late = True

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        """Retries after the first try: ``RIVEG_PIPELINE_MAX_RETRIES`` of this process."""
        return get_runtime().settings.pipeline.retries

    def __call__(self, state: State) -> State:
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(
            job_id=state.get("job_id"), post_id=state.get("id"), step=self.step
        ):
            attempt = self.request.retries + 1 if self.request.id else 1
            runtime = get_runtime()
            self._skip_if_done_before(runtime, started)
            starts = self._refuse_poison(runtime, state, started)
            log.info("step started", attempt=attempt, start=starts)
            tag_current_span(job_id=state.get("job_id") or "", post_id=str(state.get("id")),
                             step=self.step)  # fmt: skip
            job_id = state.get("job_id")
            if job_id:
                runtime.jobs.update(job_id, status="running", step=self.step)
            outcome = "failure"
            try:
                # Celery's thread pool cannot kill a step: its stage calls share its time limit.
                with time_budget(runtime.settings.pipeline.task_time_limit_s):
                    result = super().__call__(state)
                outcome = "success"
            except (InvalidInput, StageInputError) as exc:
                outcome = "bad_post"
                log.info("step failed", outcome=outcome, ms=self._ms(started), error=str(exc))
                error = PostError(f"post {state.get('id')!r}: {exc}")
                self._failed(runtime, job_id, error)
                raise error from None
            except Retry as retry:
                outcome = "retry"
                log.warning("step failed, retrying", outcome=outcome, ms=self._ms(started),
                            error=str(retry.exc))  # fmt: skip
                raise
            except Exception as exc:
                log.error("step failed", outcome="error", ms=self._ms(started),
                          error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                self._failed(runtime, job_id, exc)
                raise
            finally:
                metrics.TASKS.labels(self.step, outcome).inc()
                metrics.TASK_SECONDS.labels(self.step).observe(time.perf_counter() - started)
            elapsed = self._ms(started)
            result.setdefault("timings_ms", {}).setdefault(self.step, elapsed)
            log.info("step done", outcome="ok", ms=elapsed)
        return result

    def _skip_if_done_before(self, runtime: Runtime, started: float) -> None:
        """A step whose result is stored already is not done again: its message came back
        (the broker restarted before the acknowledgement, a worker died just after the step),
        and the post's next step was sent before the result was stored (Celery sends it
        first), so the chain goes on without it. Raises Ignore: no new state, nothing sent."""
        if not self.request.id or runtime.settings.embedded:
            return
        if self.AsyncResult(self.request.id).state != states.SUCCESS:
            return
        log.info("step skipped", outcome="done_before", ms=self._ms(started))
        metrics.TASKS.labels(self.step, "done_before").inc()
        raise Ignore()

    def _refuse_poison(self, runtime: Runtime, state: State, started: float) -> int:
        """Count this start of this try; a try that keeps coming back (its worker died running
        it, ``acks_late`` brought it back) ends the post after ``RIVEG_PIPELINE_MAX_STARTS``
        starts: failed, with the reason, and kept on the dead-letter queue; never a redelivery
        loop. Returns the start's number (1 in embedded mode, which has no redelivery)."""
        if not self.request.id or runtime.settings.embedded:
            return 1
        starts = runtime.jobs.count_start(self.request.id, self.request.retries)
        limit = runtime.settings.pipeline.max_starts
        if starts <= limit:
            return starts
        reason = (f"poison post: step {self.step} was started {starts} times and its worker "
                  f"died each time (limit {limit})")  # fmt: skip
        log.error("step refused", outcome="poison", ms=self._ms(started), error=reason)
        metrics.TASKS.labels(self.step, "poison").inc()
        try:
            publish_dead(runtime.settings, state, reason)
        except Exception as exc:  # the post still fails: say why it is not on the queue
            log.error("cannot keep the poison post", error=str(exc))
        error = PostError(f"post {state.get('id')!r}: {reason}")
        self._failed(runtime, state.get("job_id"), error)
        raise error

    @staticmethod
    def _ms(started: float) -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    def _failed(self, runtime: Runtime, job_id: str | None, error: Exception) -> None:
        """The job ends here: record the failure and notify."""
        if job_id:
            finish_job(runtime.settings, runtime.jobs, job_id,
                       error=f"{self.step}: {type(error).__name__}: {error}")  # fmt: skip


TASKS: dict[str, StepTask] = {}
"""Step name -> its task, filled by :func:`pipeline_step` in the order the steps are defined."""


def pipeline_step(step: str) -> Callable[[Callable[[State, Runtime], State | None]], StepTask]:
    """Make ``fn(state, runtime)`` the task ``riveg.<step>`` (a :class:`StepTask`); ``fn``
    updates the state in place, or returns the document that replaces it."""

    def decorate(fn: Callable[[State, Runtime], State | None]) -> StepTask:
        @functools.wraps(fn)
        def run(state: State) -> State:
            replaced = fn(state, get_runtime())
            return state if replaced is None else replaced

        task = app.task(base=StepTask, name=task_name(step), step=step)(run)
        TASKS[step] = task
        return task

    return decorate


def _job(state: State) -> str:
    return state["job_id"]


def _image(state: State) -> common_pb2.ImageRef:
    image = state["image"]
    return image_ref(image["key"], image["width"], image["height"])


@pipeline_step("store")
def store(state: State, runtime: Runtime) -> None:
    """Validate the uploaded post: text within the limits and an image that decodes within
    them; record its size."""
    limits = runtime.settings.limits
    check_text(state.get("text", ""), limits.max_text_chars)
    data = runtime.store.get_bytes(state["image"]["key"])
    image = decode_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
    state["image"].update(width=image.width, height=image.height)


@pipeline_step("knowledge")
def knowledge(state: State, runtime: Runtime) -> None:
    """Auxiliary knowledge about the post from the LLM stage: describe the image (released
    caption by ``image_id`` when the state has one), then the knowledge prompt with it."""
    llm = runtime.client("llm")
    image_id = state.get("image_id") or ""
    described = llm.call(
        "Describe", llm_pb2.DescribeRequest(image=_image(state), image_id=image_id), _job(state)
    )
    state["image_description"] = described.description
    request = llm_pb2.KnowledgeRequest(
        text=state["text"], image=_image(state), image_description=described.description
    )
    reply = llm.call("Knowledge", request, _job(state))
    state["knowledge"] = reply.knowledge
    state.setdefault("models", {})["llm"] = reply.model


@pipeline_step("mner")
def mner(state: State, runtime: Runtime) -> None:
    """Named entities of the text (helped by the knowledge when present)."""
    request = mner_pb2.RecognizeRequest(text=state["text"], knowledge=state.get("knowledge") or "")
    reply = runtime.client("mner").call("Recognize", request, _job(state))
    state["entities"] = [entity_from_proto(e) for e in reply.entities]
    state.setdefault("models", {})["mner"] = reply.model


def _batches(items: list[Any], runtime: Runtime) -> Iterator[tuple[int, list[Any]]]:
    """(offset, slice) of at most ``max_entities`` items: a post with more entities than one
    stage call may carry is sent in several calls."""
    size = runtime.settings.limits.max_entities
    for offset in range(0, len(items), size):
        yield offset, items[offset : offset + size]


@pipeline_step("expand")
def expand(state: State, runtime: Runtime) -> None:
    """A referring expression ``Entity(TYPE)-description`` for every entity."""
    for _, batch in _batches(state["entities"], runtime):
        request = llm_pb2.ExpandRequest(
            text=state["text"],
            entities=[entity_to_proto(e) for e in batch],
            knowledge=state.get("knowledge") or "",
        )
        reply = runtime.client("llm").call("Expand", request, _job(state))
        for entity, message in zip(batch, reply.entities, strict=True):
            entity["expression"] = message.expression
        state.setdefault("models", {})["llm"] = reply.model


@pipeline_step("ve")
def ve(state: State, runtime: Runtime) -> None:
    """Visual entailment of every entity against the image, in one batch per call."""
    for _, batch in _batches(state["entities"], runtime):
        request = ve_pb2.EntailRequest(
            image=_image(state), entities=[entity_to_proto(e) for e in batch]
        )
        reply = runtime.client("ve").call("Entail", request, _job(state))
        for entity, result in zip(batch, reply.results, strict=True):
            entity["groundable"] = result.groundable
            entity["ve_score"] = round(float(result.score), 4)
        state.setdefault("models", {})["ve"] = reply.model


@pipeline_step("vg")
def vg(state: State, runtime: Runtime) -> None:
    """A box for every groundable entity, in one batch per call."""
    visible = [e for e in state["entities"] if e.get("groundable")]
    for entity in state["entities"]:
        entity["box"] = None
    for _, batch in _batches(visible, runtime):
        request = vg_pb2.GroundRequest(
            image=_image(state), entities=[entity_to_proto(e) for e in batch]
        )
        reply = runtime.client("vg").call("Ground", request, _job(state))
        for entity, result in zip(batch, reply.results, strict=True):
            entity["box"] = box_from_proto(result.box) if result.found else None
        state.setdefault("models", {})["vg"] = reply.model


@pipeline_step("seg")
def seg(state: State, runtime: Runtime) -> None:
    """A mask (a PNG in the store) for every box, in one batch per call."""
    boxed = [e for e in state["entities"] if e.get("box")]
    for entity in state["entities"]:
        entity["mask_key"] = None
    for offset, batch in _batches(boxed, runtime):
        request = seg_pb2.SegmentRequest(
            image=_image(state),
            boxes=[box_to_proto(e["box"]) for e in batch],
            output_prefix=f"masks/{_job(state)}" + (f"/{offset}" if offset else ""),
        )
        reply = runtime.client("seg").call("Segment", request, _job(state))
        for entity, mask in zip(batch, reply.masks, strict=True):
            entity["mask_key"] = mask.png_key
        state.setdefault("models", {})["seg"] = reply.model


RESULT_ENTITY_KEYS = ("text", "start", "end", "type")


def result_of(state: State, runtime: Runtime) -> State:
    """The per-post result document (masks as COCO RLE)."""
    entities = []
    for entity in state["entities"]:
        mask = None
        if entity.get("mask_key"):
            mask = mask_to_rle(png_mask(runtime.store.get_bytes(entity["mask_key"])))
        expression = entity.get("expression") or ""
        entities.append(
            {
                **{key: entity[key] for key in RESULT_ENTITY_KEYS},
                "expansion": expression,
                "groundable": bool(entity.get("groundable")),
                "ve_score": entity.get("ve_score"),
                "box": entity.get("box"),
                "mask": mask,
            }
        )
    return {
        "job_id": state["job_id"],
        "id": state["id"],
        "submitted_at": state.get("submitted_at"),
        "text": state["text"],
        "entities": entities,
        "models": dict(sorted(state.get("models", {}).items())),
        "timings_ms": dict(state.get("timings_ms", {})),
    }


@pipeline_step("assemble")
def assemble(state: State, runtime: Runtime) -> State:
    """Build the result, keep it in the object store, and return it (the result backend's copy)."""
    started = time.perf_counter()
    result = result_of(state, runtime)
    result["finished_at"] = now()
    result["timings_ms"]["assemble"] = round((time.perf_counter() - started) * 1000, 1)
    key = runtime.store.put_json(result_key(state["id"]), result)
    finish_job(runtime.settings, runtime.jobs, state["job_id"], result=result, result_key=key)
    log.info("post done", entities=len(result["entities"]), result_key=key)
    return result


assert tuple(TASKS) == STEPS, "every step has one task, in order"
