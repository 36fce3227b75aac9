"""`riveg gateway` in embedded mode, through a real HTTP client: submit, poll and fetch results;
idempotent resubmission; API keys; backpressure; bad payloads; a signed callback delivered to a
loopback receiver; and a property-based run of its OpenAPI description (schemathesis)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from riveg.core.errors import InvalidInput
from riveg.core.network import check_outbound_url
from riveg.gateway.client import GatewayClient
from riveg.orchestration.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from riveg.sample import SAMPLE_IMAGE, SAMPLE_TEXT
from tests.support.processes import console_script, spawn_gateway

API_KEY = "test-key-5b8e1d"
CALLBACK_SECRET = "callback-secret-2c9a"
MAX_IMAGE_BYTES = 1_000_000
MAX_BODY_BYTES = 2_000_000
MAX_BACKLOG = 3
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Receiver(BaseHTTPRequestHandler):
    """Loopback HTTP server: serves /img.jpg, /page.html, /big.jpg; records POSTs."""

    posts: ClassVar[list[tuple[float, dict[str, str], bytes]]] = []
    fail_first = 0

    def do_GET(self) -> None:
        routes = {
            "/img.jpg": ("image/jpeg", SAMPLE_IMAGE.read_bytes()),
            "/page.html": ("text/html", b"<html>not an image</html>"),
            "/big.jpg": ("image/jpeg", b"\xff\xd8" + b"0" * (MAX_IMAGE_BYTES + 10)),
        }
        kind, body = routes.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in routes else 404)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.fail_first > 0:  # the first tries fail: the sender must retry
            Receiver.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        Receiver.posts.append((time.time(), dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`riveg gateway` (embedded) on a free port with API keys, small limits, loopback URLs
    allowed, and a callback secret; yields its URL and log path."""
    tmp = tmp_path_factory.mktemp("gateway")
    keys = tmp / "keys"
    keys.write_text(f"# test key\nsha256:{hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp),
        "RIVEG_STORE_PATH": str(tmp / "store"),
        "RIVEG_GATEWAY_API_KEYS_FILE": str(keys),
        "RIVEG_GATEWAY_URL_HOSTS": "127.0.0.1",
        "RIVEG_GATEWAY_CALLBACK_SECRET": CALLBACK_SECRET,
        "RIVEG_GATEWAY_MAX_BACKLOG": str(MAX_BACKLOG),
        "RIVEG_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RIVEG_LIMITS_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
    }  # fmt: skip
    log = tmp / "gateway.log"
    try:
        process, url, _ = spawn_gateway(env, log)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield {"url": url, "log": log, "store": tmp / "store"}
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture
def client(gateway) -> Iterator[GatewayClient]:
    with GatewayClient(gateway["url"], API_KEY) as api:
        yield api


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(gateway, body: object, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{gateway['url']}/v1/posts", json=body, headers={**AUTH, **(headers or {})},
                      timeout=30, **kwargs)  # fmt: skip


def test_submit_poll_and_fetch_the_result(gateway, client) -> None:
    body = {"id": "gw-1", "text": SAMPLE_TEXT, "image_b64": _b64(SAMPLE_IMAGE.read_bytes())}
    response = _post(gateway, body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["id"] == "gw-1"
    assert response.headers["Location"] == f"/v1/jobs/{job['job_id']}"
    seen = set()
    deadline = time.monotonic() + 120
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        job = client.get(job["job_id"])
        seen.add((job["status"], job["step"]))
        time.sleep(0.05)
    assert job["status"] == "done", job
    assert any(status == "running" and step for status, step in seen), seen
    result = job["result"]
    assert result["job_id"] == job["job_id"] and result["id"] == "gw-1"
    assert result["submitted_at"] == job["submitted_at"] < job["finished_at"]
    people = [e for e in result["entities"] if e["type"] == "PER"]
    assert people and people[0]["box"] and people[0]["mask"]
    assert client.get_post("gw-1") == job
    overlay = httpx.get(f"{gateway['url']}/v1/jobs/{job['job_id']}/overlay.png", headers=AUTH)
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).width == 512
    index = result["entities"].index(people[0])
    mask = httpx.get(f"{gateway['url']}/v1/jobs/{job['job_id']}/masks/{index}.png", headers=AUTH)
    assert mask.status_code == 200 and Image.open(io.BytesIO(mask.content)).size == (512, 512)
    stored = json.loads((gateway["store"] / "results" / "posts" / "gw-1.json").read_text())
    assert stored == result


def test_resubmission_returns_the_same_job_and_runs_once(gateway, client) -> None:
    body = {"id": "gw-idem", "text": "Eileen Collins at NASA",
            "image_b64": _b64(SAMPLE_IMAGE.read_bytes())}  # fmt: skip
    first = _post(gateway, body)
    again = _post(gateway, body)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["job_id"] == first.json()["job_id"]
    keyed = {**body, "id": "gw-idem-2"}
    one = _post(gateway, keyed, {"Idempotency-Key": "key-77"})
    two = _post(gateway, {**keyed, "id": "gw-idem-3"}, {"Idempotency-Key": "key-77"})
    assert one.json()["job_id"] == two.json()["job_id"] and two.status_code == 200
    assert client.get_post("gw-idem-2")["job_id"] == one.json()["job_id"]
    for job_id in (first.json()["job_id"], one.json()["job_id"]):
        assert client.wait(job_id, timeout=120)["status"] == "done"
    # Processed once: one acceptance and one run of the first step for each job.
    log = gateway["log"].read_text().splitlines()
    for post_id in ("gw-idem", "gw-idem-2"):
        accepted = [
            line
            for line in log
            if "post accepted" in line and line.rstrip().endswith(f"post_id={post_id}")
        ]
        stored = [line for line in log if "step started" in line and f"post_id={post_id} " in line
                  and "step=store" in line]  # fmt: skip
        assert len(accepted) == len(stored) == 1, (post_id, accepted, stored)
    assert not [line for line in log if "post_id=gw-idem-3" in line]


def test_api_keys_guard_every_route_but_health(gateway) -> None:
    url = gateway["url"]
    body = {"id": "gw-auth", "text": "hello", "image_key": "nothing"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        refused = httpx.post(f"{url}/v1/posts", json=body, headers=headers)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{url}/v1/jobs/abc").status_code == 401
    assert httpx.get(f"{url}/v1/posts/abc").status_code == 401
    assert httpx.get(f"{url}/v1/jobs/abc", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").status_code == 200
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/posts", "/v1/posts:batch", "/v1/jobs/{job_id}", "/v1/posts/{post_id}",
            "/healthz", "/readyz"} <= set(spec["paths"])  # fmt: skip


@pytest.mark.parametrize(
    ("name", "body", "status", "field", "message"),
    [
        ("no text", {"id": "b1", "image_key": "x"}, 422, "text", "Field required"),
        ("empty text", {"id": "b2", "text": "  ", "image_b64": "AAAA"}, 422, "text", "empty"),
        ("no image", {"id": "b3", "text": "hi"}, 422, None, "exactly one of"),
        ("two images", {"id": "b4", "text": "hi", "image_b64": "AA==", "image_key": "k"}, 422,
         None, "exactly one of"),
        ("wrong type", {"id": 5, "text": "hi", "image_key": "k"}, 422, "id", "string"),
        ("unknown field", {"id": "b5", "text": "hi", "image_key": "k", "colour": 1}, 422,
         "colour", "Extra inputs"),
        ("not base64", {"id": "b6", "text": "hi", "image_b64": "%%%"}, 422, "image_b64",
         "not valid base64"),
        ("not an image", {"id": "b7", "text": "hi", "image_b64": _b64(b"GIF89a nope")}, 422,
         "image_b64", "not an image"),
        ("image too large", {"id": "b8", "text": "hi",
                             "image_b64": _b64(b"0" * (MAX_IMAGE_BYTES + 1))}, 413, "image_b64",
         "over"),
        ("text too long", {"id": "b9", "text": "a" * 2001, "image_key": "k"}, 422, "text",
         "too long"),
        ("unknown key", {"id": "b10", "text": "hi", "image_key": "images/none"}, 422,
         "image_key", "no image 'images/none'"),
        ("key outside images/", {"id": "b13", "text": "hi", "image_key": "results/posts/x.json"},
         422, "image_key", "keys: images/"),
        ("invalid key", {"id": "b14", "text": "hi", "image_key": "images/../x"}, 422,
         "image_key", "no image"),
        ("internal URL", {"id": "b11", "text": "hi", "image_url": "http://10.0.0.1/x.jpg"}, 422,
         "image_url", "not in the allowed"),
        ("not http", {"id": "b12", "text": "hi", "image_url": "file:///etc/passwd"}, 422,
         "image_url", "not an http"),
        ("bad port", {"id": "b15", "text": "hi", "image_url": "http://example.com:99999/x"},
         422, "image_url", "not a valid URL"),
        ("bad IPv6", {"id": "b16", "text": "hi", "image_url": "http://[::1/x"}, 422,
         "image_url", "not a valid URL"),
        ("callback checked with a key", {"id": "b17", "text": "hi", "image_key": "images/x",
         "callback_url": "http://10.0.0.1/hook"}, 422, "callback_url", "not in the allowed"),
    ],
)  # fmt: skip
def test_bad_posts_are_refused_by_name(gateway, name, body, status, field, message) -> None:
    response = _post(gateway, body)
    assert response.status_code == status, (name, response.text)
    refusal = response.json()
    assert message in refusal["error"], (name, refusal)
    assert refusal["field"] == field, (name, refusal)


def test_image_urls_are_fetched_with_checks(gateway, receiver, client) -> None:
    cases = {
        f"{receiver}/page.html": (422, "not an image (content type 'text/html')"),
        f"{receiver}/big.jpg": (413, "over 1,000,000 bytes"),
        f"{receiver}/missing.jpg": (422, "HTTP 404"),
        "http://127.0.0.1:1/x.jpg": (422, "could not be fetched"),
    }
    for url, (status, message) in cases.items():
        response = _post(gateway, {"id": f"u-{url}", "text": "hi", "image_url": url})
        assert response.status_code == status and message in response.json()["error"], url
        assert response.json()["field"] == "image_url"
    good = _post(gateway, {"id": "gw-url", "text": SAMPLE_TEXT, "image_url": f"{receiver}/img.jpg"})
    assert good.status_code == 202
    assert client.wait(good.json()["job_id"], timeout=120)["status"] == "done"


def test_bodies_and_kinds_the_api_does_not_take(gateway) -> None:
    url = f"{gateway['url']}/v1/posts"
    not_json = httpx.post(
        url, content=b"{oops", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    plain = httpx.post(url, content=b"hi", headers={**AUTH, "Content-Type": "text/plain"})
    assert plain.status_code == 415
    huge = httpx.post(url, content=b"x" * (MAX_BODY_BYTES + 1),
                      headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert huge.status_code == 413 and "request body" in huge.json()["error"]
    for body in (b'{"id": ' + b"9" * 5000 + b"}", b"[" * 100_000):  # a huge number; deep
        odd = httpx.post(url, content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert odd.status_code == 400 and "not JSON" in odd.json()["error"]
    batch = httpx.post(f"{gateway['url']}/v1/posts:batch", json={"posts": ["x"]}, headers=AUTH)
    assert batch.status_code == 422 and set(batch.json()) == {"error", "field"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    streamed = httpx.post(
        url, content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_multipart_upload(gateway, client) -> None:
    response = httpx.post(
        f"{gateway['url']}/v1/posts", headers=AUTH,
        data={"id": "gw-form", "text": SAMPLE_TEXT},
        files={"image": ("a.jpg", SAMPLE_IMAGE.read_bytes(), "image/jpeg")},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    assert client.wait(response.json()["job_id"], timeout=120)["status"] == "done"


def test_batch_has_an_entry_per_post(gateway, client) -> None:
    image = _b64(SAMPLE_IMAGE.read_bytes())
    posts = [{"id": "gw-b1", "text": "NASA today", "image_b64": image},
             {"id": "gw-b2", "text": ""}, {"text": "no id", "image_b64": image}]  # fmt: skip
    response = httpx.post(f"{gateway['url']}/v1/posts:batch", json={"posts": posts},
                          headers=AUTH, timeout=30)  # fmt: skip
    assert response.status_code == 202
    entries = response.json()
    assert [e["accepted"] for e in entries] == [True, False, False]
    assert entries[1]["field"] == "text" and entries[2]["field"] == "id"
    assert client.wait(entries[0]["job_id"], timeout=120)["status"] == "done"


def test_backpressure_past_the_backlog(gateway, client) -> None:
    image = _b64(SAMPLE_IMAGE.read_bytes())
    responses = [
        _post(gateway, {"id": f"gw-bp-{n}", "text": SAMPLE_TEXT, "image_b64": image})
        for n in range(MAX_BACKLOG + 2)
    ]
    codes = [r.status_code for r in responses]
    assert codes[:MAX_BACKLOG] == [202] * MAX_BACKLOG and 429 in codes[MAX_BACKLOG:], codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) > 0 and "backlog" in refused.json()["error"]
    for response in responses:
        if response.status_code == 202:
            assert client.wait(response.json()["job_id"], timeout=300)["status"] == "done"


def test_signed_callback_reaches_the_receiver(gateway, receiver, client) -> None:
    Receiver.posts.clear()
    Receiver.fail_first = 1  # the first delivery gets 503: it must be retried
    submitted = time.time()
    body = {"id": "gw-cb", "text": SAMPLE_TEXT, "image_b64": _b64(SAMPLE_IMAGE.read_bytes()),
            "callback_url": f"{receiver}/hook"}  # fmt: skip
    job = _post(gateway, body).json()
    deadline = time.monotonic() + 120
    while not Receiver.posts and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Receiver.posts, "no callback arrived"
    arrived, headers, payload = Receiver.posts[0]
    assert verify(CALLBACK_SECRET, headers[TIMESTAMP_HEADER], payload, headers[SIGNATURE_HEADER])
    assert not verify("other-secret", headers[TIMESTAMP_HEADER], payload,
                      headers[SIGNATURE_HEADER])  # fmt: skip
    old = str(int(headers[TIMESTAMP_HEADER]) - 3600)  # a replay an hour later fails
    assert not verify(CALLBACK_SECRET, old, payload, sign(CALLBACK_SECRET, old, payload))
    document = json.loads(payload)
    assert document["job_id"] == job["job_id"] and document["status"] == "done"
    assert document["result"]["entities"]
    print(f"submission to callback: {arrived - submitted:.2f} s")


def test_openapi_property_run_finds_no_server_error(gateway, tmp_path: Path) -> None:
    """schemathesis generates requests from /openapi.json; none may get a 5xx."""
    done = subprocess.run(
        [console_script("st"), "run", f"{gateway['url']}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "25", "--seed", "1",
         "-H", f"Authorization: Bearer {API_KEY}", "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its .schemathesis/ there
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def _riveg(gateway, *args: str, key: str = API_KEY) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "RIVEG_GATEWAY_URL": gateway["url"],
           "RIVEG_GATEWAY_API_KEY": key}  # fmt: skip
    return subprocess.run([console_script("riveg"), *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_submit_status_and_result_commands(gateway) -> None:
    submitted = _riveg(gateway, "submit", "--text", SAMPLE_TEXT, "--image", str(SAMPLE_IMAGE),
                       "--id", "gw-cli", "--wait", "--json")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job = json.loads(submitted.stdout.strip().splitlines()[-1])
    assert job["status"] == "done" and job["id"] == "gw-cli"
    status = _riveg(gateway, "status", job["job_id"], "--json")
    assert json.loads(status.stdout.strip().splitlines()[-1])["status"] == "done"
    result = _riveg(gateway, "result", "--post", "gw-cli", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout.strip().splitlines()[-1]) == job["result"]
    refused = _riveg(gateway, "status", job["job_id"], key="wrong")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("Error: HTTP 401")
    missing = _riveg(gateway, "result", "no-such-job", "--no-wait")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


def _metric(gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway['url']}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_metrics_count_requests_and_posts_by_outcome(gateway, client) -> None:
    counters = [("riveg_gateway_posts_total", {"outcome": o})
                for o in ("accepted", "duplicate", "refused")]  # fmt: skip
    route = {"route": "/v1/posts", "method": "POST"}
    before = [_metric(gateway, name, **labels) for name, labels in counters]
    requests_before = {code: _metric(gateway, "riveg_gateway_requests_total", code=code, **route)
                       for code in ("202", "200", "422")}  # fmt: skip
    body = {"id": "gw-metrics", "text": "NASA", "image_b64": _b64(SAMPLE_IMAGE.read_bytes())}
    job = _post(gateway, body).json()
    _post(gateway, body)
    _post(gateway, {"id": "gw-metrics-bad", "text": "NASA"})
    after = [_metric(gateway, name, **labels) for name, labels in counters]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    for code in ("202", "200", "422"):
        moved = _metric(gateway, "riveg_gateway_requests_total", code=code, **route)
        assert moved - requests_before[code] == 1, code
    assert _metric(gateway, "riveg_gateway_backlog_jobs") >= 0
    client.wait(job["job_id"], timeout=120)
    assert _metric(gateway, "riveg_gateway_backlog_jobs") == 0


def test_outbound_urls_are_pinned_to_the_checked_address() -> None:
    """The request goes to the address that was checked (a second DNS answer cannot send it
    elsewhere); the name travels in Host and TLS."""
    target = check_outbound_url("https://localhost:8443/a/b.jpg?x=1", ("localhost",))
    assert target.url == "https://127.0.0.1:8443/a/b.jpg?x=1"
    assert target.headers == {"Host": "localhost:8443"}
    assert target.extensions == {"sni_hostname": "localhost"}
    with pytest.raises(InvalidInput, match="internal address"):
        check_outbound_url("http://localhost/x", ())
