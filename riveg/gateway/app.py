"""The HTTP API of RiVEG-serve (FastAPI on uvicorn): posts in, jobs and results out, under /v1.

FastAPI because the API is a handful of JSON routes whose schema should be the code's own:
request and response models are pydantic (as the settings are), the OpenAPI document at
``/openapi.json`` is generated from them, and it runs on uvicorn, a well-kept ASGI server.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import redis
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from riveg import __version__
from riveg.core.config import ConfigError, Settings
from riveg.core.images import decode_image, encode_png, rle_to_mask
from riveg.core.logging import get_logger
from riveg.core.storage import StoreUnavailable
from riveg.gateway import metrics
from riveg.gateway.intake import Intake, PostIn, Refused
from riveg.orchestration.overlay import render_overlay

log = get_logger("riveg.gateway")
RETRY_AFTER_S = 5


def load_api_keys(path: Path | None) -> frozenset[str]:
    """The SHA-256 hex digests of the accepted keys: one ``sha256:<hex>`` per line of the file
    (blank lines and ``#`` comments skipped); ConfigError names a bad line."""
    if path is None:
        return frozenset()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(
            f"RIVEG_GATEWAY_API_KEYS_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    digests = set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind, _, digest = line.partition(":")
        if kind != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(f"{path} line {number}: expected sha256:<64 lower-case hex digits>")
        digests.add(digest)
    if not digests:
        raise ConfigError(f"{path} holds no key")
    return frozenset(digests)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413, whether it announces its
    length or streams it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # No announced length (chunked): read it all here, counting, then replay it.
            chunks, received, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                received += len(chunks[-1])
                if received > self.limit:
                    await self._too_large(send)
                    return
                more = message.get("more_body", False)
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replayed() -> Message:
                return replay.pop() if replay else await receive()

            await self.app(scope, replayed, send)
            return
        await self.app(scope, receive, send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps({"error": f"the request body is over {self.limit:,} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class JobOut(BaseModel):
    """A job: its status (queued, running with the step, done, failed with the error)."""

    job_id: str
    id: str
    status: str = Field(description="queued, running, done or failed")
    step: str | None = Field(None, description="the step running now")
    error: str | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = Field(None, description="the pipeline's result, when done")


class BatchIn(BaseModel):
    """Several posts in one request."""

    posts: list[dict[str, Any]]


class BatchEntry(BaseModel):
    """What became of one post of a batch."""

    id: str | None
    accepted: bool
    job_id: str | None = None
    status: str | None = None
    error: str | None = None
    field: str | None = None


class ErrorOut(BaseModel):
    """Why a request was refused; ``field`` names the part of the post to blame."""

    error: str
    field: str | None = None


POST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PostIn.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["id", "text", "image"],
                    "properties": {
                        "id": {"type": "string"},
                        "text": {"type": "string"},
                        "image": {"type": "string", "format": "binary"},
                        "image_id": {"type": "string"},
                        "callback_url": {"type": "string"},
                        "knowledge": {"type": "boolean"},
                    },
                }
            },
        },
    }
}
ERRORS = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (401, "no or wrong API key"),
        (413, "body or image too large"),
        (422, "invalid post"),
        (429, "backlog full; see Retry-After"),
    )
}


DEPENDENCY_DOWN: dict[type[Exception], str] = {
    redis.exceptions.ConnectionError: "the job records (Redis) are unreachable",
    redis.exceptions.TimeoutError: "the job records (Redis) do not answer",
    StoreUnavailable: "the object store is unreachable",
    OperationalError: "the broker is unreachable",
}
"""Errors of a dependency that is down or restarting: 503 with Retry-After, never a 500."""


def _refusal(status: int, message: str, field: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return JSONResponse(ErrorOut(error=message, field=field).model_dump(), status, headers)


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    return f"{field}: {first['msg']}" if field else first["msg"], field


def create_app(settings: Settings, intake: Intake, ready_checks: dict[str, Any]) -> FastAPI:
    """The API over ``intake``; ``ready_checks`` maps a dependency's name to a function that
    raises when it is unreachable (for /readyz)."""
    keys = load_api_keys(settings.gateway.api_keys_file)
    app = FastAPI(
        title="RiVEG-serve",
        version=__version__,
        description="Grounded multimodal NER on social-media posts: submit a post (text and "
        "image), get every named entity with its type, whether it is visible, its box and mask.",
    )

    def authorize(authorization: str | None = Header(None)) -> None:
        if not keys:
            return
        scheme, _, key = (authorization or "").partition(" ")
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(digest, k) for k in keys):
            raise HTTPException(
                401,
                "a valid API key is required (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    metrics.BACKLOG.set_function(intake.runtime.jobs.backlog)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})  # fmt: skip
    def prometheus_metrics() -> Response:
        """This process' Prometheus metrics (text exposition format)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        metrics.REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        metrics.LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")]
        field = ".".join(where) or None
        message = f"{field}: {first['msg']}" if field else str(first["msg"])
        return JSONResponse(ErrorOut(error=message, field=field).model_dump(), 422)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        metrics.POSTS.labels("refused").inc()
        return _refusal(exc.status, exc.message, exc.field)

    async def _dependency_down(request: Request, exc: Exception) -> JSONResponse:
        reason = next(text for kind, text in DEPENDENCY_DOWN.items() if isinstance(exc, kind))
        log.warning("dependency down", route=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return _refusal(503, f"{reason}; try again shortly")

    for kind in DEPENDENCY_DOWN:
        app.add_exception_handler(kind, _dependency_down)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorOut}})
    def readyz() -> JSONResponse:
        """The broker, the job records and the object store are reachable."""
        failed = {}
        for name, check in ready_checks.items():
            try:
                check()
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
        if failed:
            return JSONResponse({"status": "unready", "failed": failed}, 503)
        return JSONResponse({"status": "ready", "checked": sorted(ready_checks)})

    async def _post_in(request: Request) -> tuple[PostIn, bytes | None]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        image_file = None
        if kind == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=16)
            fields: dict[str, Any] = {}
            for name, value in form.multi_items():
                if name == "image" and hasattr(value, "read"):
                    image_file = await value.read()
                elif isinstance(value, str):
                    fields[name] = value
            if image_file is None:
                raise Refused(422, "the multipart post has no image file", "image")
            # The file is the image: mark a source given, so that exactly one is named.
            data: Any = {**fields, "image_b64": ""}
        elif kind == "application/json":
            try:
                data = json.loads(await request.body())
            except (ValueError, RecursionError) as exc:  # JSON, UTF-8, huge numbers, depth
                raise Refused(400, f"the body is not JSON: {str(exc)[:200]}") from None
        else:
            raise Refused(415, "send application/json or multipart/form-data")
        try:
            return PostIn.model_validate(data), image_file
        except ValidationError as exc:
            message, field = _validation_message(exc)
            raise Refused(422, message, field) from None

    @app.post(
        "/v1/posts",
        status_code=202,
        tags=["posts"],
        openapi_extra=POST_BODY,
        responses={200: {"model": JobOut, "description": "submitted before: that job"}, **ERRORS},
        dependencies=[Depends(authorize)],
    )
    async def submit(request: Request, idempotency_key: str | None = Header(None)) -> JSONResponse:
        """Submit a post; 202 with its job (and ``Location``), or 200 with the job its id (or
        ``Idempotency-Key``) started before."""
        post, image_file = await _post_in(request)
        # Blocking work (image download, store, job records, broker) runs on the thread pool,
        # so that other requests and the health checks are answered meanwhile.
        accepted = await run_in_threadpool(intake.accept, post, image_file, idempotency_key)
        metrics.POSTS.labels("accepted" if accepted.created else "duplicate").inc()
        job = await run_in_threadpool(intake.job, accepted.record)
        location = f"/v1/jobs/{job['job_id']}"
        return JSONResponse(job, 202 if accepted.created else 200, {"Location": location})

    @app.post(
        "/v1/posts:batch",
        status_code=202,
        tags=["posts"],
        response_model=list[BatchEntry],
        responses=ERRORS,
        dependencies=[Depends(authorize)],
    )
    def submit_batch(batch: BatchIn) -> list[BatchEntry]:
        """Submit up to ``RIVEG_GATEWAY_MAX_BATCH`` posts; one entry per post, in order."""
        if len(batch.posts) > settings.gateway.max_batch:
            raise Refused(
                413,
                f"{len(batch.posts)} posts, the limit is {settings.gateway.max_batch} per batch",
                "posts",
            )
        entries = []
        for raw in batch.posts:
            post_id = raw.get("id") if isinstance(raw.get("id"), str) else None
            try:
                accepted = intake.accept(PostIn.model_validate(raw))
            except ValidationError as exc:
                message, field = _validation_message(exc)
                metrics.POSTS.labels("refused").inc()
                entries.append(BatchEntry(id=post_id, accepted=False, error=message, field=field))
                continue
            except Refused as exc:
                metrics.POSTS.labels("refused").inc()
                entries.append(
                    BatchEntry(id=post_id, accepted=False, error=exc.message, field=exc.field)
                )
                continue
            record = accepted.record
            metrics.POSTS.labels("accepted" if accepted.created else "duplicate").inc()
            entries.append(
                BatchEntry(
                    id=post_id, accepted=True, job_id=record["job_id"], status=record["status"]
                )
            )
        return entries

    def _record(job_id: str) -> dict[str, Any]:
        record = intake.runtime.jobs.get(job_id)
        if record is None or "id" not in record:
            raise HTTPException(404, f"no job {job_id!r}")
        return record

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobOut,
        tags=["jobs"],
        responses={404: {"model": ErrorOut}, 401: ERRORS[401]},
        dependencies=[Depends(authorize)],
    )
    def get_job(job_id: str) -> dict[str, Any]:
        """A job's status, and its result when done."""
        return intake.job(_record(job_id))

    @app.get(
        "/v1/posts/{post_id:path}",
        response_model=JobOut,
        tags=["posts"],
        responses={404: {"model": ErrorOut}, 401: ERRORS[401]},
        dependencies=[Depends(authorize)],
    )
    def get_post(post_id: str) -> dict[str, Any]:
        """The job of a post id: status, and its result when done."""
        record = intake.runtime.jobs.find(post_id)
        if record is None:
            raise HTTPException(404, f"no post {post_id!r}")
        return intake.job(record)

    def _done(job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        record = _record(job_id)
        if record.get("status") != "done":
            raise HTTPException(409, f"job {job_id} is {record.get('status')}, not done")
        return record, intake.runtime.store.get_json(record["result_key"])

    png = {"content": {"image/png": {}}, "description": "a PNG image"}

    @app.get(
        "/v1/jobs/{job_id}/overlay.png",
        tags=["jobs"],
        response_class=Response,
        responses={200: png, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
        dependencies=[Depends(authorize)],
    )
    def overlay(job_id: str) -> Response:
        """The image with the result drawn on it: masks, boxes, labels and a legend."""
        record, result = _done(job_id)
        limits = settings.limits
        image = decode_image(
            intake.runtime.store.get_bytes(record["image_key"]),
            max_bytes=limits.max_image_bytes,
            max_pixels=limits.max_image_pixels,
        )
        buffer = io.BytesIO()
        render_overlay(image, result).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get(
        "/v1/jobs/{job_id}/masks/{index}.png",
        tags=["jobs"],
        response_class=Response,
        responses={200: png, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
        dependencies=[Depends(authorize)],
    )
    def mask(job_id: str, index: int) -> Response:
        """The mask of the result's entity ``index`` (0-based) as a black-and-white PNG."""
        _, result = _done(job_id)
        entities = result.get("entities", [])
        if not 0 <= index < len(entities) or not entities[index].get("mask"):
            raise HTTPException(404, f"entity {index} of job {job_id} has no mask")
        return Response(
            encode_png(rle_to_mask(entities[index]["mask"]) * 255), media_type="image/png"
        )

    return app


def with_body_limit(app: FastAPI, settings: Settings) -> ASGIApp:
    """The app behind the request-body limit."""
    return BodyLimit(app, settings.gateway.max_body_bytes)
