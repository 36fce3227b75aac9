"""A small client of OpenAI-compatible HTTP endpoints (vLLM, Ollama, llama.cpp server, hosted).

Both flavours are spoken: ``/completions`` (a raw prompt) and ``/chat/completions`` (messages).
Every request has a timeout; 429, 5xx, timeouts and dropped connections are retried with
exponential backoff (``Retry-After`` honoured, capped); at most ``concurrency`` requests are in
flight at once; replies that are not the expected JSON raise :class:`LlmHttpError` at once.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from riveg.core.logging import get_logger

log = get_logger("services.llm.http")

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class LlmHttpError(RuntimeError):
    """The endpoint failed (after retries where retrying made sense), or replied malformed."""


@dataclass
class Generation:
    """One completion: its text, and the token counts the endpoint reported (0 when absent)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class OpenAIClient:
    """Thread-safe client of one endpoint and model."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 60.0
    retries: int = 4
    concurrency: int = 4
    backoff_s: float = 0.5
    _client: httpx.Client = field(init=False, repr=False)
    _slots: threading.BoundedSemaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("no model name for the endpoint: set RIVEG_LLM_API_MODEL")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._client = httpx.Client(
            base_url=self.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=max(1, self.concurrency)),
        )
        self._slots = threading.BoundedSemaphore(max(1, self.concurrency))

    # --- transport ---

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body and return the JSON reply, retrying transient failures."""
        attempt = 0
        while True:
            try:
                with self._slots:
                    response = self._client.post(path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
                reason = f"request to {self.base_url}{path} {kind}: {type(exc).__name__} {exc}"
                retry_after = None
            else:
                if response.status_code < 300:
                    return self._json(response, path)
                reason = (
                    f"{self.base_url}{path} answered HTTP {response.status_code}: "
                    f"{response.text[:300].strip()}"
                )
                if response.status_code not in RETRY_STATUS:
                    raise LlmHttpError(reason)
                retry_after = _retry_after(response)
            if attempt >= self.retries:
                raise LlmHttpError(f"{reason} (gave up after {attempt + 1} attempts)")
            delay = retry_after if retry_after is not None else self.backoff_s * 2**attempt
            delay = min(MAX_BACKOFF_S, delay) * (1.0 + 0.1 * random.random())
            log.warning("LLM endpoint call failed, retrying", error=reason, wait_s=round(delay, 2))
            time.sleep(delay)
            attempt += 1

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            value = response.json()
        except ValueError:
            raise LlmHttpError(
                f"{self.base_url}{path} replied with something that is not JSON: "
                f"{response.text[:200]!r}"
            ) from None
        if not isinstance(value, dict):
            raise LlmHttpError(f"{self.base_url}{path} replied with JSON that is not an object")
        return value

    # --- the two endpoint flavours ---

    def complete(self, prompt: str, max_tokens: int, stop: list[str] | None = None) -> Generation:
        """Greedy ``/completions`` of a raw prompt."""
        choice, reply = self._greedy("/completions", "prompt", prompt, max_tokens, stop)
        text = choice.get("text")
        if not isinstance(text, str):
            raise LlmHttpError("/completions reply has no choices[0].text string")
        return Generation(text, *_usage(reply))

    def chat(
        self, messages: list[dict[str, Any]], max_tokens: int, stop: list[str] | None = None
    ) -> Generation:
        """Greedy ``/chat/completions`` of a message list."""
        choice, reply = self._greedy("/chat/completions", "messages", messages, max_tokens, stop)
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise LlmHttpError("/chat/completions reply has no choices[0].message.content string")
        return Generation(content, *_usage(reply))

    def _greedy(
        self, path: str, key: str, value: Any, max_tokens: int, stop: list[str] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST a greedy request (temperature 0) with the input under ``key`` to ``path``;
        return the reply's first choice and the whole reply."""
        body: dict[str, Any] = {
            "model": self.model,
            key: value,
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        if stop:
            body["stop"] = stop
        reply = self.post(path, body)
        return _choice(reply, path), reply

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _choice(reply: dict[str, Any], path: str) -> dict[str, Any]:
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = reply.get("error")
        detail = f": {error}" if error else ""
        raise LlmHttpError(f"{path} reply has no choices{detail}")
    return choices[0]


def _usage(reply: dict[str, Any]) -> tuple[int, int]:
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return 0, 0


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
