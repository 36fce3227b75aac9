"""The OpenAI-compatible HTTP backend against a real HTTP server on loopback: both endpoint
flavours, the API key, retries on 429/5xx, timeouts, malformed replies, the concurrency limit,
the generation cache, the Describe vision path, the gRPC service and the ``riveg llm`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from riveg.core.config import load_settings
from riveg.core.storage import LocalObjectStore
from riveg.serving.client import StageCallError
from riveg.serving.messages import image_ref
from riveg.serving.server import StageServer
from riveg.serving.stages import connect
from riveg.v1 import common_pb2, llm_pb2
from services.llm.backends import create_backend
from services.llm.cache import GenerationCache
from services.llm.openai import LlmHttpError, OpenAIClient

Behaviour = Callable[[str, dict[str, Any], int], tuple[int, dict[str, str], bytes]]


def _completion(path: str, text: str) -> bytes:
    usage = {"prompt_tokens": 10, "completion_tokens": 2}
    if path.endswith("/chat/completions"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    return json.dumps({"choices": [choice], "usage": usage}).encode()


def answer(text: str = " a space agency\nText: more") -> Behaviour:
    """Every request succeeds with ``text`` (a completion that runs past the newline)."""
    return lambda path, body, n: (200, {}, _completion(path, text))


class FakeOpenAI:
    """A real OpenAI-compatible HTTP server on 127.0.0.1 whose replies a test scripts."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = answer()
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.active = 0
        self.max_active = 0
        self.delay_s = 0.0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with owner._lock:
                    owner.requests.append((self.path, body, dict(self.headers)))
                    count = len(owner.requests)
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                try:
                    if owner.delay_s:
                        time.sleep(owner.delay_s)
                    status, headers, payload = owner.behaviour(self.path, body, count)
                finally:
                    with owner._lock:
                        owner.active -= 1
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.close()


def _settings(fake: FakeOpenAI, tmp_path: Path, **extra: Any):
    values = {
        "llm_backend": "openai",
        "llm_api_base": fake.url,
        "llm_api_model": "test-model",
        "llm_api_retries": 2,
        "llm_api_timeout_s": 5.0,
        "store_kind": "local",
        "store_path": tmp_path / "store",
        **extra,
    }
    return load_settings(**values)


def _client(fake: FakeOpenAI, **extra: Any) -> OpenAIClient:
    return OpenAIClient(**{"base_url": fake.url, "model": "m", "backoff_s": 0.01, **extra})


def test_completions_flavour_sends_greedy_request_with_key_and_cuts_at_newline(fake, tmp_path):
    settings = _settings(fake, tmp_path, llm_api_key="sk-test-123")
    backend = create_backend("openai", settings)
    backend.load()
    [description] = backend.expand("NASA launches a rocket", [{"text": "NASA", "type": "ORG"}])
    assert description == "a space agency"
    path, body, headers = fake.requests[0]
    assert path == "/v1/completions"
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    assert body["stop"] == ["\n"] and body["max_tokens"] == settings.llm.max_new_tokens
    assert body["prompt"].endswith("Question: Briefly, what is the NASA in the Text?\nAnswer:")
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert backend.model == "test-model@completions"


def test_chat_flavour_sends_system_and_user_messages(fake, tmp_path):
    settings = _settings(fake, tmp_path, llm_api_mode="chat")
    backend = create_backend("openai", settings)
    backend.load()
    fake.behaviour = answer("Named entities: 1. NASA (organization)")
    assert backend.knowledge("NASA launches a rocket", "a photo of a rocket").startswith(
        "Named entities"
    )
    path, body, headers = fake.requests[0]
    assert path == "/v1/chat/completions" and "Authorization" not in headers
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"].endswith(
        "Text: NASA launches a rocket\nImage: a photo of a rocket\n"
        "Question: Which named entities does the text mention, and what are they?\nAnswer:"
    )


def test_429_and_5xx_are_retried_with_backoff(fake):
    replies = {1: 429, 2: 500, 3: 503}

    def flaky(path: str, body: dict, n: int):
        if n in replies:
            return replies[n], {"Retry-After": "0"} if n == 1 else {}, b'{"error": "busy"}'
        return 200, {}, _completion(path, "ok")

    fake.behaviour = flaky
    client = _client(fake, retries=3)
    started = time.perf_counter()
    assert client.complete("p", 4).text == "ok"
    assert len(fake.requests) == 4
    assert time.perf_counter() - started >= 0.01 + 0.02  # backoff 0.01 * 2**n after 429


def test_persistent_500_gives_up_after_the_retries(fake):
    fake.behaviour = lambda path, body, n: (500, {}, b'{"error": "model crashed"}')
    with pytest.raises(LlmHttpError, match=r"HTTP 500.*model crashed.*gave up after 3 attempts"):
        _client(fake, retries=2).complete("p", 4)
    assert len(fake.requests) == 3


def test_other_4xx_is_not_retried(fake):
    fake.behaviour = lambda path, body, n: (400, {}, b'{"error": "bad model name"}')
    with pytest.raises(LlmHttpError, match=r"HTTP 400.*bad model name"):
        _client(fake, retries=3).complete("p", 4)
    assert len(fake.requests) == 1


def test_timeouts_are_retried_then_reported(fake):
    fake.delay_s = 1.0
    started = time.perf_counter()
    with pytest.raises(LlmHttpError, match=r"timed out.*gave up after 2 attempts"):
        _client(fake, retries=1, timeout_s=0.2).complete("p", 4)
    assert len(fake.requests) == 2
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (b'{"object": "text_completion"}', "no choices"),
        (b'{"choices": []}', "no choices"),
        (b'{"choices": [{"text": null}]}', r"no choices\[0\].text"),
        (b"[1, 2]", "not an object"),
    ],
)
def test_malformed_replies_fail_at_once(fake, reply, message):
    fake.behaviour = lambda path, body, n: (200, {}, reply)
    with pytest.raises(LlmHttpError, match=message):
        _client(fake, retries=3).complete("p", 4)
    assert len(fake.requests) == 1


def test_chat_reply_without_content_is_malformed(fake):
    fake.behaviour = lambda path, body, n: (200, {}, b'{"choices": [{"message": {}}]}')
    with pytest.raises(LlmHttpError, match=r"message\.content"):
        _client(fake).chat([{"role": "user", "content": "hi"}], 4)


def test_concurrency_limit_holds(fake, tmp_path):
    fake.delay_s = 0.2
    settings = _settings(fake, tmp_path, llm_api_concurrency=2)
    backend = create_backend("openai", settings)
    backend.load()
    entities = [{"text": f"Entity{i}", "type": "PER"} for i in range(6)]
    assert len(backend.expand("a post", entities)) == 6
    assert len(fake.requests) == 6 and fake.max_active == 2


def test_a_repeated_post_is_answered_from_the_cache(fake, tmp_path):
    settings = _settings(fake, tmp_path)
    backend = create_backend("openai", settings)
    backend.cache = GenerationCache(LocalObjectStore(tmp_path / "cache"))
    backend.load()
    entities = [{"text": "NASA", "type": "ORG"}]
    first = backend.expand("NASA launches a rocket", entities)
    second = backend.expand("NASA launches a rocket", entities)
    assert first == second and len(fake.requests) == 1
    assert backend.cache.hits == 1
    backend.expand("NASA launches another rocket", entities)  # another prompt: a new request
    assert len(fake.requests) == 2
    keys = list((tmp_path / "cache" / "llm-cache" / "openai" / "test-model@completions").rglob("*"))
    assert any(k.suffix == ".json" for k in keys)


@pytest.fixture
def llm_server(fake, tmp_path) -> Iterator[tuple[Any, LocalObjectStore]]:
    from riveg.serving.stages import build_stage

    settings = _settings(fake, tmp_path, llm_vision_model="test-vision")
    store = LocalObjectStore(settings.store.path)
    server = StageServer(build_stage("llm", settings, store), settings)
    port = server.start(port=0, host="127.0.0.1")
    client = connect("llm", settings, f"127.0.0.1:{port}")
    yield client, store
    client.close()
    server.stop(grace=0.5)


def test_grpc_service_expands_describes_and_reports_backend_failures(fake, llm_server):
    client, store = llm_server
    current = client.admin.Current(common_pb2.CurrentModelRequest(), timeout=5)
    assert current.ready and current.model == "test-model@completions"
    entity = common_pb2.Entity(text="NASA", start=0, end=4, type="ORG")
    reply = client.call("Expand", llm_pb2.ExpandRequest(text="NASA rocket", entities=[entity]))
    assert reply.entities[0].expression == "NASA(ORG)-a space agency"

    from riveg.sample import SAMPLE_IMAGE

    key = store.put_bytes("images/sample", SAMPLE_IMAGE.read_bytes())
    fake.behaviour = answer("An astronaut in an orange suit.")
    described = client.call("Describe", llm_pb2.DescribeRequest(image=image_ref(key, 1, 1)))
    assert (described.description, described.source) == ("An astronaut in an orange suit.", "api")
    content = fake.requests[-1][1]["messages"][0]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/")

    fake.behaviour = lambda path, body, n: (503, {}, b'{"error": "overloaded"}')
    with pytest.raises(StageCallError) as error:
        client.call("Knowledge", llm_pb2.KnowledgeRequest(text="Fresh post", image_description="x"))
    assert error.value.code == grpc.StatusCode.INTERNAL
    assert "HTTP 503" in error.value.details and "gave up" in error.value.details


def _riveg(fake: FakeOpenAI, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "RIVEG_LLM_API_BASE": fake.url,
        "RIVEG_LLM_API_MODEL": "test-model",
        "RIVEG_LLM_API_RETRIES": "1",
        "RIVEG_STORE_KIND": "local",
        "RIVEG_STORE_PATH": str(tmp_path / "cli-store"),
    }
    command = [sys.executable, "-m", "riveg.cli", "llm", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_cli_expand_prints_the_referring_expression_or_fails_clearly(fake, tmp_path):
    done = _riveg(fake, tmp_path, "expand", "--text", "NASA rocket", "--entity", "NASA",
                  "--type", "ORG", "--backend", "openai")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "NASA(ORG)-a space agency\n"
    fake.behaviour = lambda path, body, n: (500, {}, b'{"error": "down"}')
    done = _riveg(fake, tmp_path, "knowledge", "--text", "Another post", "--backend", "openai")
    assert done.returncode != 0 and done.stdout == ""
    assert "the LLM backend failed" in done.stderr and "HTTP 500" in done.stderr


def test_pipeline_knowledge_step_describes_the_image_then_asks_for_knowledge(fake, llm_server):
    from riveg.orchestration import runtime as runtime_module
    from riveg.orchestration import tasks
    from riveg.orchestration.runtime import Runtime
    from riveg.sample import SAMPLE_IMAGE

    client, store = llm_server
    key = store.put_bytes("images/post", SAMPLE_IMAGE.read_bytes())

    def reply(path: str, body: dict, n: int):
        if "image_url" in json.dumps(body):
            return 200, {}, _completion(path, "An astronaut in an orange suit.")
        return 200, {}, _completion(path, "Named entities: 1. NASA (organization)")

    fake.behaviour = reply
    previous = runtime_module._runtime
    runtime_module.set_runtime(Runtime(client.settings, store, {"llm": client.addr}))
    try:
        state = {"id": "p", "job_id": "j", "text": "Eileen Collins at NASA",
                 "image": {"key": key, "width": 1, "height": 1}}  # fmt: skip
        tasks.knowledge(state)
    finally:
        runtime_module.set_runtime(previous)
    assert state["image_description"] == "An astronaut in an orange suit."
    assert state["knowledge"] == "Named entities: 1. NASA (organization)"
    prompt = fake.requests[-1][1]["prompt"]
    assert prompt.endswith("Text: Eileen Collins at NASA\nImage: An astronaut in an orange suit.\n"
                           "Question: Which named entities does the text mention, and what are "
                           "they?\nAnswer:")  # fmt: skip
