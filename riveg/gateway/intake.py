"""Taking posts in: validation, idempotency, backpressure and submission, whatever the way in
(the HTTP API, the AMQP intake queue). The checks are the pipeline's own limits, applied
before anything is fetched, stored or enqueued.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from riveg.core.errors import InvalidInput
from riveg.core.images import check_image
from riveg.core.limits import check_text
from riveg.core.logging import get_logger
from riveg.core.network import check_outbound_url
from riveg.orchestration.jobs import Record, new_record
from riveg.orchestration.notify import finish_job, job_document
from riveg.orchestration.pipeline import store_image, submit_post
from riveg.orchestration.runtime import Runtime

log = get_logger("riveg.gateway")
IMAGE_FIELDS = ("image_b64", "image_url", "image_key")


class PostIn(BaseModel):
    """A post as submitted: its id, text, exactly one image source, and options."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    id: str = Field(min_length=1, max_length=256, description="the post's id (idempotency key)")
    text: str = Field(min_length=1, description="the post's text")
    image_b64: str | None = Field(None, description="the image file, base64")
    image_url: str | None = Field(None, max_length=2048, description="an http(s) URL to fetch")
    image_key: str | None = Field(None, max_length=1024, description="a key in the object store")
    image_id: str | None = Field(
        None, max_length=256, description="benchmark image id (released caption)"
    )
    knowledge: bool | None = Field(None, description="run the LLM knowledge step")
    callback_url: str | None = Field(
        None, max_length=2048, description="POSTed the job when it ends (signed)"
    )

    @model_validator(mode="after")
    def _one_image(self) -> PostIn:
        given = [name for name in IMAGE_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(IMAGE_FIELDS)} (got {len(given)})")
        return self


class Refused(Exception):
    """A post not taken: the HTTP status, the field to blame (if one) and the message."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


@dataclass
class Accepted:
    """A post taken (or found taken before): its job record and whether it is new."""

    record: Record
    created: bool


class Intake:
    """Validates and submits posts to the pipeline of ``runtime``: enqueued with a broker, run
    by a bounded pool of threads in embedded mode."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.pool = (
            ThreadPoolExecutor(self.settings.gateway.workers, thread_name_prefix="riveg-post")
            if self.settings.embedded
            else None
        )

    def close(self) -> None:
        """Let the posts being run finish."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=False)

    def accept(
        self, post: PostIn, image_file: bytes | None = None, idempotency_key: str | None = None
    ) -> Accepted:
        """Take a post: the existing job when its id (or key) was taken before; otherwise
        validate, store the image, record and submit the job. :class:`Refused` when not."""
        # The post id, and the Idempotency-Key when given: either names the job it started.
        keys = [post.id, *([f"idempotency:{idempotency_key}"] if idempotency_key else [])]
        for key in keys:
            existing = self.runtime.jobs.find(key)
            if existing is not None:
                return Accepted(existing, False)
        gateway, limits = self.settings.gateway, self.settings.limits
        if self.runtime.jobs.backlog() >= gateway.max_backlog:
            raise Refused(429, f"the backlog is full ({gateway.max_backlog} jobs); retry later")
        try:
            check_text(post.text, limits.max_text_chars)
        except InvalidInput as exc:
            raise Refused(422, str(exc), "text") from None
        image_key = self._image(post, image_file)
        job_id = uuid.uuid4().hex
        record, created = self.runtime.jobs.claim(
            post.id, new_record(job_id, post.id, post.callback_url, image_key)
        )
        if not created:
            return Accepted(record, False)
        try:
            for key in keys[1:]:
                self.runtime.jobs.link(key, job_id)
            self._submit(post, job_id, image_key)
        except Exception:
            self.runtime.jobs.release(job_id, *keys)
            raise
        log.info("post accepted", post_id=post.id, job_id=job_id)
        return Accepted(record, True)

    def _image(self, post: PostIn, image_file: bytes | None) -> str:
        """The stored image's key, after checking its bytes and header against the limits."""
        limits = self.settings.limits
        field = (
            "image"
            if image_file is not None
            else next(name for name in IMAGE_FIELDS if getattr(post, name) is not None)
        )
        if post.callback_url is not None:
            try:
                check_outbound_url(post.callback_url, self.settings.gateway.allowed_hosts)
            except InvalidInput as exc:
                raise Refused(422, str(exc), "callback_url") from None
        if post.image_key is not None:
            key = post.image_key
            try:
                found = key.startswith("images/") and self.runtime.store.exists(key)
            except ValueError:  # not a valid key at all ("images/../x", "images//")
                found = False
            if not found:
                raise Refused(422, f"no image {key[:200]!r} in the store (keys: images/...)",
                              "image_key")  # fmt: skip
            return key
        if image_file is not None:
            data = image_file
        elif post.image_b64 is not None:
            if len(post.image_b64) > limits.max_image_bytes * 4 // 3 + 4:
                raise Refused(413, f"the image is over {limits.max_image_bytes:,} bytes", field)
            try:
                data = base64.b64decode(post.image_b64, validate=True)
            except (binascii.Error, ValueError):
                raise Refused(422, "image_b64 is not valid base64", field) from None
        else:
            data = self._fetch(post.image_url or "")
        if len(data) > limits.max_image_bytes:
            raise Refused(413, f"the image is over {limits.max_image_bytes:,} bytes", field)
        try:
            check_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
        except InvalidInput as exc:
            raise Refused(422, str(exc), field) from None
        return store_image(self.runtime.store, data)

    def _fetch(self, url: str) -> bytes:
        """Download an image URL: allowed host, a timeout, no redirects, an image content type,
        at most the byte limit."""
        gateway, limit = self.settings.gateway, self.settings.limits.max_image_bytes
        try:
            target = check_outbound_url(url, gateway.allowed_hosts)
        except InvalidInput as exc:
            raise Refused(422, str(exc), "image_url") from None
        deadline = time.monotonic() + gateway.url_timeout_s  # for the whole download
        try:
            with httpx.Client(timeout=gateway.url_timeout_s) as http, http.stream(
                "GET", target.url, headers=target.headers, extensions=target.extensions
            ) as response:  # fmt: skip
                if response.status_code != 200:
                    raise Refused(
                        422, f"image_url answered HTTP {response.status_code}", "image_url"
                    )
                kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if not kind.startswith("image/"):
                    raise Refused(
                        422, f"image_url is not an image (content type {kind!r})", "image_url"
                    )
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if time.monotonic() > deadline:
                        raise Refused(422, f"image_url took over {gateway.url_timeout_s:g} s",
                                      "image_url")  # fmt: skip
                    if len(data) > limit:
                        raise Refused(
                            413, f"the image at image_url is over {limit:,} bytes", "image_url"
                        )
                return bytes(data)
        except httpx.HTTPError as exc:
            raise Refused(422, f"image_url could not be fetched: {exc}", "image_url") from None

    def _submit(self, post: PostIn, job_id: str, image_key: str) -> None:
        args = (
            self.runtime,
            post.text,
            b"",
            post.id,
            post.knowledge,
            post.image_id,
            job_id,
            image_key,
        )
        if self.pool is None:
            submit_post(*args)
        else:
            self.pool.submit(self._run, args)

    def _run(self, args: tuple[Any, ...]) -> None:
        """One post in embedded mode (a pool thread): the chain runs here, eagerly."""
        try:
            submit_post(*args)
        except Exception as exc:  # refused before any step ran: the job ends here
            finish_job(
                self.settings, self.runtime.jobs, args[6], error=f"{type(exc).__name__}: {exc}"
            )

    def job(self, record: Record) -> dict[str, Any]:
        """The job as the API shows it: status, step, error, times and, when done, the result."""
        result = None
        if record.get("status") == "done" and record.get("result_key"):
            result = self.runtime.store.get_json(record["result_key"])
        return job_document(record, result)
