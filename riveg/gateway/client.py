"""A small Python client of the gateway's API: submit a post, get or wait for its job."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

FINAL = ("done", "failed")


class GatewayError(RuntimeError):
    """The gateway refused a request: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class GatewayClient:
    """``submit``, ``get``, ``get_post`` and ``wait`` against a gateway at ``url``."""

    def __init__(
        self, url: str = "http://127.0.0.1:8080", api_key: str | None = None, timeout: float = 60.0
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise GatewayError(response.status_code, message)
        return response.json()

    def submit(
        self,
        post_id: str,
        text: str,
        image: Path | bytes | None = None,
        *,
        image_url: str | None = None,
        image_key: str | None = None,
        callback_url: str | None = None,
        knowledge: bool | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a post (the image as a file, bytes, a URL or a store key); the job."""
        body: dict[str, Any] = {"id": post_id, "text": text}
        if image is not None:
            data = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
            body["image_b64"] = base64.b64encode(data).decode()
        optional = {
            "image_url": image_url,
            "image_key": image_key,
            "callback_url": callback_url,
            "knowledge": knowledge,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/v1/posts", json=body, headers=headers))

    def get(self, job_id: str) -> dict[str, Any]:
        """A job: status, and the result when done."""
        return self._json(self.http.get(f"/v1/jobs/{quote(job_id, safe='')}"))

    def get_post(self, post_id: str) -> dict[str, Any]:
        """The job of a post id."""
        return self._json(self.http.get(f"/v1/posts/{quote(post_id, safe='')}"))

    def wait(self, job_id: str, timeout: float = 600.0, interval: float = 0.5) -> dict[str, Any]:
        """Poll the job until it is done or failed; TimeoutError after ``timeout`` seconds. A
        gateway that is restarting or whose dependencies are (503, connection refused) is
        asked again, not given up on."""
        deadline = time.monotonic() + timeout
        status = "unknown"
        while True:
            try:
                job = self.get(job_id)
                status = job["status"]
                if status in FINAL:
                    return job
            except GatewayError as exc:
                if exc.status != 503:
                    raise
                status = f"unknown ({exc.message})"
            except httpx.TransportError as exc:
                status = f"unknown ({type(exc).__name__})"
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s")
            time.sleep(interval)
