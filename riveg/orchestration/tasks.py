"""One small, idempotent Celery task per pipeline step.

Every task takes the post's JSON state and returns it updated; only object keys travel, never
pixels or mask bytes. Steps: store -> (knowledge) -> mner -> expand -> ve -> vg -> seg -> assemble.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from riveg.common.backend import InvalidInput
from riveg.common.images import decode_image, mask_to_rle, png_mask
from riveg.common.logging import get_logger
from riveg.common.messages import box_from_proto, box_to_proto, entity_from_proto, entity_to_proto
from riveg.common.rpc import StageCallError
from riveg.orchestration.celery_app import app
from riveg.orchestration.runtime import Runtime, get_runtime
from riveg.v1 import llm_pb2, mner_pb2, seg_pb2, ve_pb2, vg_pb2

State = dict[str, Any]
log = get_logger("riveg.tasks")

TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
MAX_RETRIES = 3


class PostError(Exception):
    """The post cannot be processed as given (bad image, empty text, ...); not retried."""


def pipeline_task(step: str) -> Callable[[Callable[[State, Runtime], None]], Any]:
    """Make ``fn(state, runtime)`` the Celery task ``riveg.<step>``: timing, logs, retries."""

    def decorate(fn: Callable[[State, Runtime], None]) -> Any:
        @app.task(name=f"riveg.{step}", bind=True, max_retries=MAX_RETRIES)
        @functools.wraps(fn)
        def task(self: Any, state: State) -> State:
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(job_id=state["job_id"], step=step):
                try:
                    fn(state, get_runtime())
                except InvalidInput as exc:
                    raise PostError(f"post {state.get('id')!r}: {exc}") from None
                except StageCallError as exc:
                    if exc.is_input_error:
                        raise PostError(f"post {state.get('id')!r}: {exc}") from None
                    if exc.code in TRANSIENT and self.request.retries < MAX_RETRIES:
                        log.warning("stage call failed, retrying", error=str(exc))
                        raise self.retry(exc=exc, countdown=2**self.request.retries) from None
                    raise
                elapsed = round((time.perf_counter() - started) * 1000, 1)
                state.setdefault("timings_ms", {})[step] = elapsed
                log.info("step done", ms=elapsed)
            return state

        return task

    return decorate


def _job(state: State) -> str:
    return state["job_id"]


def _image(state: State):
    from riveg.common.messages import image_ref

    image = state["image"]
    return image_ref(image["key"], image["width"], image["height"])


@pipeline_task("store")
def store(state: State, runtime: Runtime) -> None:
    """Validate the uploaded post: non-empty text and an image that decodes; record its size."""
    if not state.get("text", "").strip():
        raise InvalidInput("the post text is empty")
    data = runtime.store.get_bytes(state["image"]["key"])
    image = decode_image(data)
    state["image"].update(width=image.width, height=image.height)


@pipeline_task("knowledge")
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


@pipeline_task("mner")
def mner(state: State, runtime: Runtime) -> None:
    """Named entities of the text (helped by the knowledge when present)."""
    request = mner_pb2.RecognizeRequest(text=state["text"], knowledge=state.get("knowledge") or "")
    reply = runtime.client("mner").call("Recognize", request, _job(state))
    state["entities"] = [entity_from_proto(e) for e in reply.entities]
    state.setdefault("models", {})["mner"] = reply.model


@pipeline_task("expand")
def expand(state: State, runtime: Runtime) -> None:
    """A referring expression ``Entity(TYPE)-description`` for every entity."""
    if not state["entities"]:
        return
    request = llm_pb2.ExpandRequest(
        text=state["text"],
        entities=[entity_to_proto(e) for e in state["entities"]],
        knowledge=state.get("knowledge") or "",
    )
    reply = runtime.client("llm").call("Expand", request, _job(state))
    for entity, message in zip(state["entities"], reply.entities, strict=True):
        entity["expression"] = message.expression
    state.setdefault("models", {})["llm"] = reply.model


@pipeline_task("ve")
def ve(state: State, runtime: Runtime) -> None:
    """Visual entailment of every entity against the image, in one batch."""
    if not state["entities"]:
        return
    request = ve_pb2.EntailRequest(
        image=_image(state), entities=[entity_to_proto(e) for e in state["entities"]]
    )
    reply = runtime.client("ve").call("Entail", request, _job(state))
    for entity, result in zip(state["entities"], reply.results, strict=True):
        entity["groundable"] = result.groundable
        entity["ve_score"] = round(float(result.score), 4)
    state.setdefault("models", {})["ve"] = reply.model


@pipeline_task("vg")
def vg(state: State, runtime: Runtime) -> None:
    """A box for every groundable entity, in one batch."""
    visible = [e for e in state["entities"] if e.get("groundable")]
    for entity in state["entities"]:
        entity["box"] = None
    if not visible:
        return
    request = vg_pb2.GroundRequest(
        image=_image(state), entities=[entity_to_proto(e) for e in visible]
    )
    reply = runtime.client("vg").call("Ground", request, _job(state))
    for entity, result in zip(visible, reply.results, strict=True):
        entity["box"] = box_from_proto(result.box) if result.found else None
    state.setdefault("models", {})["vg"] = reply.model


@pipeline_task("seg")
def seg(state: State, runtime: Runtime) -> None:
    """A mask (a PNG in the store) for every box, in one batch."""
    boxed = [e for e in state["entities"] if e.get("box")]
    for entity in state["entities"]:
        entity["mask_key"] = None
    if not boxed:
        return
    request = seg_pb2.SegmentRequest(
        image=_image(state),
        boxes=[box_to_proto(e["box"]) for e in boxed],
        output_prefix=f"masks/{_job(state)}",
    )
    reply = runtime.client("seg").call("Segment", request, _job(state))
    for entity, mask in zip(boxed, reply.masks, strict=True):
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
        "id": state["id"],
        "text": state["text"],
        "entities": entities,
        "models": dict(sorted(state.get("models", {}).items())),
        "timings_ms": dict(state.get("timings_ms", {})),
    }


@app.task(name="riveg.assemble", bind=True)
def assemble(self: Any, state: State) -> State:
    """Build the result, keep it in the object store, and return it (the result backend's copy)."""
    started = time.perf_counter()
    runtime = get_runtime()
    with structlog.contextvars.bound_contextvars(job_id=state["job_id"], step="assemble"):
        result = result_of(state, runtime)
        result["timings_ms"]["assemble"] = round((time.perf_counter() - started) * 1000, 1)
        runtime.store.put_json(f"results/{state['job_id']}.json", result)
        log.info("post done", entities=len(result["entities"]))
    return result
