"""Distributed mode on one machine: `riveg up` (5 stage servers, 6 Celery workers, nanio S3)
against the real RabbitMQ and Redis; results must equal the embedded mode's."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from riveg.core.stages import QUEUES, STAGES
from riveg.gateway.amqp import SCHEMAS
from riveg.gateway.client import GatewayClient
from riveg.orchestration.celery_app import STEP_QUEUES
from riveg.orchestration.launcher import port_open
from riveg.orchestration.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from riveg.orchestration.pipeline import submit_post
from tests.conftest import SAMPLE_IMAGE
from tests.support.otlp import OtlpReceiver
from tests.support.processes import (
    delete_job_records,
    delete_queues,
    free_port,
    spawn_gateway,
    spawn_up,
    stop_up,
)

pytestmark = pytest.mark.integration

RIVEG = str(Path(sys.executable).parent / "riveg")
BROKER = os.environ.get("RIVEG_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("RIVEG_TEST_REDIS", "redis://127.0.0.1:6379/8")  # this module's db
POSTS = [
    ("d1", "Astronaut Eileen Collins poses at NASA 's Johnson Space Center in Houston ."),
    ("d2", "Eileen Collins and Barack Obama talk about the shuttle Discovery ."),
    ("d3", "Great photo from the Kennedy Space Center in Florida today !"),
    ("d4", "No names here , just a nice picture"),
]


RUN_KEYS = {"timings_ms", "job_id", "submitted_at", "finished_at"}  # differ from run to run


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in RUN_KEYS}


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    """Where every process of this module's deployment exports its spans."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver):
    """`riveg up` with its own queues, ports and bucket, tracing to `otlp`; yields the
    environment to reach it."""
    if not (port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 6379)):
        pytest.skip(
            "RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) must run: .ci/run starts them"
        )
    state = tmp_path_factory.mktemp("up")
    prefix = f"riveg-test-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    env.update({
        "RIVEG_BROKER_URL": BROKER, "RIVEG_BROKER_RESULT_BACKEND": REDIS,
        "RIVEG_BROKER_QUEUE_PREFIX": prefix,
        "RIVEG_STORE_KIND": "s3", "RIVEG_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
        "RIVEG_S3_BUCKET": "riveg-it", "RIVEG_LOG_FORMAT": "json",
        "RIVEG_TRACING_EXPORTER": "otlp", "RIVEG_TRACING_ENDPOINT": otlp.endpoint,
        **{f"RIVEG_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}"
           for s in STAGES},
    })  # fmt: skip
    try:
        process, ready = spawn_up(env, state, concurrency=2)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield {"env": env, "state": state, "ready": ready}
    finally:
        stop_up(process)
        delete_queues(BROKER, prefix)
        delete_job_records(REDIS, prefix)


def test_up_reports_every_process(distributed) -> None:
    processes = distributed["ready"]["processes"]
    assert {"s3", "serve-llm", "serve-mner", "serve-ve", "serve-vg", "serve-seg",
            "worker-pipeline", "worker-llm", "worker-seg"} <= set(processes)  # fmt: skip


def test_distributed_results_equal_embedded_and_bad_posts_fail_alone(
    distributed, cluster, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "sample.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    (images / "junk.png").write_bytes(b"\x89PNG but truncated garbage")
    lines = [{"id": pid, "text": text, "image": "sample.jpg"} for pid, text in POSTS]
    lines.insert(1, {"id": "bad-image", "text": "Obama in Paris", "image": "junk.png"})
    lines.insert(3, {"id": "empty-text", "text": "", "image": "sample.jpg"})
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [RIVEG, "batch", str(posts), "--images", str(images), "--out", str(out),
         "--broker", BROKER, "--json", "--timeout", "300"],
        env=distributed["env"], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (len(POSTS), 2), done.stderr[-3000:]
    assert done.returncode == 1  # some posts failed, and the command says so
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "not an image" in records["bad-image"]["error"]
    assert "empty" in records["empty-text"]["error"]
    for post_id, text in POSTS:
        embedded = submit_post(cluster, text, SAMPLE_IMAGE.read_bytes(), post_id).get()
        assert _strip(records[post_id]) == _strip(embedded), post_id
    assert any(e["mask"] for r in records.values() for e in r.get("entities", []))


def test_gateway_amqp_intake_and_results_exchange(distributed, tmp_path: Path) -> None:
    """`riveg gateway` with the broker: a post over HTTP and one over the AMQP intake both run
    on the distributed pipeline; each finished job is published to <prefix>.results; bad intake
    messages go to <prefix>.intake.dead with their reason."""
    callbacks: list[tuple[dict, bytes]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            callbacks.append(
                (dict(self.headers), self.rfile.read(int(self.headers["Content-Length"])))
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    # Only the gateway reaches out to callback receivers: the workers publish, it delivers.
    env = {**distributed["env"], "RIVEG_GATEWAY_URL_HOSTS": "127.0.0.1",
           "RIVEG_GATEWAY_CALLBACK_SECRET": "dist-secret"}  # fmt: skip
    prefix = env["RIVEG_BROKER_QUEUE_PREFIX"]
    try:
        process, url, ready = spawn_gateway(env, tmp_path / "gateway.log", timeout=120)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    assert set(ready["checked"]) == {"broker", "job_records", "store"}
    image = base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    job_schema = Draft202012Validator(json.loads((SCHEMAS / "job.schema.json").read_text()))
    try:
        with Connection(BROKER) as connection:
            results = Queue(f"{prefix}.test-results", Exchange(f"{prefix}.results", "topic",
                            durable=True), routing_key="job.#", exclusive=True)  # fmt: skip
            results.bind(connection.default_channel).declare()
            submitted = time.monotonic()
            body = {"id": "dist-http", "text": POSTS[0][1], "image_b64": image,
                    "callback_url": f"http://127.0.0.1:{hook.server_address[1]}/hook"}  # fmt: skip
            response = httpx.post(f"{url}/v1/posts", json=body, timeout=30)
            assert response.status_code == 202, response.text
            producer = connection.Producer(serializer="json")
            intake = Queue(f"{prefix}.intake", Exchange(""), routing_key=f"{prefix}.intake",
                           durable=True)  # fmt: skip
            for body in ({"id": "dist-amqp", "text": POSTS[1][1], "image_b64": image},
                         {"id": "dist-no-image", "text": "hello"}):  # fmt: skip
                producer.publish(body, routing_key=intake.routing_key, declare=[intake])
            producer.publish("{not json", routing_key=intake.routing_key, serializer=None,
                             content_type="application/json", content_encoding="utf-8")  # fmt: skip
            producer.publish("plain", routing_key=intake.routing_key, serializer=None,
                             content_type="text/plain", content_encoding="utf-8")  # fmt: skip
            with GatewayClient(url) as client:
                job = client.wait(response.json()["job_id"], timeout=300)
                assert job["status"] == "done", job
                elapsed = time.monotonic() - submitted
                deadline = time.monotonic() + 60
                while True:
                    try:
                        amqp_job = client.get_post("dist-amqp")
                        break
                    except Exception:
                        assert time.monotonic() < deadline, "the intake post never became a job"
                        time.sleep(0.5)
                assert client.wait(amqp_job["job_id"], timeout=300)["status"] == "done"
            print(f"HTTP submission to done (distributed): {elapsed:.2f} s")
            published = {}
            deadline = time.monotonic() + 60
            while len(published) < 2 and time.monotonic() < deadline:
                message = results.bind(connection.default_channel).get(no_ack=True)
                if message is None:
                    time.sleep(0.2)
                    continue
                document = json.loads(message.body)
                job_schema.validate(document)
                published[document["id"]] = (message.delivery_info["routing_key"], document)
            assert set(published) == {"dist-http", "dist-amqp"}, published
            assert all(key == "job.done" for key, _ in published.values())
            assert published["dist-http"][1]["result"]["entities"]
            dead = Queue(f"{prefix}.intake.dead", Exchange(f"{prefix}.intake.dead", "direct",
                         durable=True), routing_key="dead", durable=True)  # fmt: skip
            reasons = []
            deadline = time.monotonic() + 30
            while len(reasons) < 3 and time.monotonic() < deadline:
                message = dead.bind(connection.default_channel).get(no_ack=True)
                if message is None:
                    time.sleep(0.2)
                    continue
                reasons.append(message.headers["x-riveg-error"])
            assert len(reasons) == 3, reasons
            assert any("exactly one of image_b64" in r for r in reasons), reasons
            assert sum("cannot decode" in r for r in reasons) == 2, reasons
            deadline = time.monotonic() + 60
            while not callbacks and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(callbacks) == 1, callbacks  # the HTTP post's; the AMQP one has none
            headers, payload = callbacks[0]
            assert verify("dist-secret", headers[TIMESTAMP_HEADER], payload,
                          headers[SIGNATURE_HEADER])  # fmt: skip
            assert json.loads(payload)["id"] == "dist-http"
    finally:
        hook.shutdown()
        process.terminate()
        process.wait(timeout=60)


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Samples of a /metrics page: (name, labels) -> value."""
    text = httpx.get(url, timeout=10).text
    families = text_string_to_metric_families(text)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


STAGE_RPCS = {"llm": "Expand", "mner": "Recognize", "ve": "Entail", "vg": "Ground",
              "seg": "Segment"}  # fmt: skip


def _analyze_with_a_person(env: dict[str, str], post_id: str) -> dict:
    """`riveg analyze --broker` on a post with a person (every stage is called); its result."""
    done = subprocess.run(
        [RIVEG, "analyze", "--text", POSTS[0][1], "--image", str(SAMPLE_IMAGE), "--id",
         post_id, "--broker", BROKER, "--json", "--timeout", "300"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(e["mask"] for e in result["entities"])
    return result


def test_one_post_moves_every_metric_by_exactly_its_share(distributed, otlp) -> None:
    """Scrape every server and worker `riveg up` started, run one post with a person (so that
    every stage is called once), scrape again: each counter moved by exactly one. The same post
    is one trace across the processes: the submitting command, every task, every stage call."""
    urls = distributed["ready"]["metrics"]
    assert set(urls) == {f"serve-{s}" for s in STAGES} | {f"worker-{q}" for q in QUEUES}
    before = {name: _scrape(url) for name, url in urls.items()}
    result = _analyze_with_a_person(distributed["env"], "metrics-1")  # every stage is called
    after = {name: _scrape(url) for name, url in urls.items()}
    for stage, method in STAGE_RPCS.items():
        name = f"serve-{stage}"
        moved = _delta(before[name], after[name], "riveg_stage_requests_total", stage=stage,
                       method=method, code="OK")  # fmt: skip
        assert moved == 1, (stage, moved)
        assert _delta(before[name], after[name], "riveg_stage_request_duration_seconds_count",
                      stage=stage, method=method) == 1  # fmt: skip
        assert after[name][("riveg_stage_in_flight_requests", frozenset({("stage", stage)}))] == 0
        models = [k for k in after[name] if k[0] == "riveg_stage_model_info"]
        assert len(models) == 1 and dict(models[0][1])["model"] == result["models"][stage]
    for step, queue in STEP_QUEUES.items():
        if step == "knowledge":
            continue
        name = f"worker-{queue}"
        assert _delta(before[name], after[name], "riveg_tasks_total", task=step,
                      outcome="success") == 1, step  # fmt: skip
        assert _delta(before[name], after[name], "riveg_task_duration_seconds_count",
                      task=step) == 1, step  # fmt: skip
    # Each worker logs one JSON line as each of its steps starts and ends, with the same job id
    # as the servers' lines.
    for step, queue in STEP_QUEUES.items():
        if step == "knowledge":
            continue
        lines = (Path(distributed["ready"]["logs"]) / f"worker-{queue}.log").read_text()
        events = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
        ours = [e for e in events if e.get("job_id") == result["job_id"]
                and e.get("step") == step and e["event"].startswith("step ")]  # fmt: skip
        assert [e["event"] for e in ours] == ["step started", "step done"], (step, ours)
        assert (
            ours[1]["post_id"] == "metrics-1" and ours[1]["outcome"] == "ok" and ours[1]["ms"] > 0
        )
    server_log = (Path(distributed["ready"]["logs"]) / "serve-mner.log").read_text()
    assert f'"job_id": "{result["job_id"]}"' in server_log
    pipeline = "worker-pipeline"
    assert _delta(before[pipeline], after[pipeline], "riveg_posts_finished_total",
                  outcome="done") == 1  # fmt: skip
    assert _delta(before[pipeline], after[pipeline], "riveg_post_duration_seconds_count",
                  outcome="done") == 1  # fmt: skip

    # The trace: spans arrive in batches (every 5 s), from every process.
    deadline = time.monotonic() + 30
    spans: list = []
    while time.monotonic() < deadline:
        roots = [s for s in otlp.spans if s.name == "riveg.submit"
                 and s.attributes.get("riveg.post_id") == "metrics-1"]  # fmt: skip
        if roots:
            spans = otlp.trace(roots[0].trace_id)
            runs = [s for s in spans if s.name.startswith("run/")]
            if len(runs) == len(STEP_QUEUES) - 1 and {s.service for s in spans} >= {
                f"riveg-serve-{stage}" for stage in STAGE_RPCS
            }:
                break
        time.sleep(0.5)
    assert spans, "no trace of the post arrived"
    ids = {s.span_id for s in spans}
    (root,) = [s for s in spans if not s.parent_id]
    assert root.name == "riveg.submit" and root.service == "riveg-analyze"
    assert all(s.parent_id in ids for s in spans if s is not root), "a parent link is broken"
    runs = [s for s in spans if s.name.startswith("run/")]
    assert [s.name for s in runs] == [f"run/riveg.{step}" for step in STEP_QUEUES
                                      if step != "knowledge"]  # fmt: skip
    assert all(s.attributes.get("riveg.job_id") == result["job_id"] for s in runs)
    for stage, method in STAGE_RPCS.items():  # each stage call: a server span in its process
        calls = [
            s for s in spans if s.service == f"riveg-serve-{stage}" and s.name.endswith(method)
        ]
        assert len(calls) == 1, (stage, [s.name for s in spans if s.service.endswith(stage)])
        assert calls[0].attributes.get("riveg.job_id") == result["job_id"]


def test_up_restarts_a_child_that_dies_and_posts_still_finish(distributed, tmp_path) -> None:
    """SIGKILL of a worker and of a stage server: `riveg up` restarts each (a status line with
    the restart counts), keeps everything else running, and a post submitted next finishes."""
    ready = distributed["ready"]  # updated in place by the lines `riveg up` prints
    for name in ("worker-mner", "serve-seg"):
        killed = ready["processes"][name]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while ready.get("restarts", {}).get(name, 0) < 1:
            assert time.monotonic() < deadline, f"{name} was not restarted: {ready}"
            time.sleep(0.5)
        assert ready["restarted"] == name and ready["processes"][name] == ready["pid"] != killed
    # The post has a mask: the restarted seg server answered.
    result = _analyze_with_a_person(distributed["env"], "after-restart")
    # A batch naming a post whose result the workers stored already takes it from the store.
    posts = tmp_path / "again.jsonl"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    posts.write_text(json.dumps({"id": "after-restart", "text": POSTS[0][1], "image": "a.jpg"}))
    out = tmp_path / "again-out.jsonl"
    again = subprocess.run(
        [RIVEG, "batch", str(posts), "--images", str(tmp_path / "images"), "--out", str(out),
         "--broker", BROKER, "--json"],
        env=distributed["env"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["from_store"]) == (1, 1), again.stderr[-2000:]
    assert json.loads(out.read_text())["job_id"] == result["job_id"]  # not processed again
