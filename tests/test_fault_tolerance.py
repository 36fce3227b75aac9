"""Riding out faults: `riveg up` restarts a child that dies (after a wait that doubles while it
keeps dying soon after its start); steps are retried for minutes, not seconds; an object store
that is down is told apart from a missing object, and retried."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

from riveg.core.config import load_settings
from riveg.core.errors import InvalidInput
from riveg.core.storage import LocalObjectStore, S3ObjectStore, StoreUnavailable
from riveg.orchestration import pipeline
from riveg.orchestration.celery_app import celery_config, publish_retry_policy, worker_config
from riveg.orchestration.jobs import MemoryJobStore, RedisJobStore, new_record, result_key
from riveg.orchestration.launcher import Launcher, free_port, port_open
from riveg.orchestration.pipeline import JobFailed, JobResult, submit_patiently
from riveg.orchestration.runtime import Runtime
from riveg.orchestration.tasks import TASKS, PostError, StepTask
from riveg.serving.client import (
    StageClient,
    TimeBudgetSpent,
    TransientStageError,
    time_budget,
)
from riveg.serving.messages import box_to_proto, image_ref
from riveg.serving.server import StageServer
from riveg.serving.stages import build_stage, stub_class
from riveg.v1 import mner_pb2, seg_pb2
from tests.support.private import PrivateRedis
from tests.support.processes import delete_queues


def test_a_child_that_keeps_dying_is_restarted_with_growing_waits(tmp_path: Path) -> None:
    launcher = Launcher(load_settings(), tmp_path, dict(os.environ))
    launcher.spawn("crash", ["sh", "-c", "echo started; exit 3"])
    launcher.spawn("steady", ["sleep", "30"])
    restarted_at = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < 7.8:
            if "crash" in launcher.supervise():
                restarted_at.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        launcher.stop(grace=2)
    # Restarts 1 s, then 2 s, then 4 s after each death (the child dies at once).
    assert len(restarted_at) == 3, restarted_at
    waits = [b - a for a, b in zip([0.0, *restarted_at], restarted_at, strict=False)]
    assert [round(w) for w in waits] == [1, 2, 4], waits
    assert launcher.restarts == {"crash": 3, "steady": 0}
    assert (tmp_path / "crash.log").read_text().count("started") == 4


def test_steps_are_retried_for_the_configured_time() -> None:
    assert load_settings().pipeline.retries == 14  # 1+2+4+8+16 s, then 30 s: 301 s >= 300 s
    assert load_settings(pipeline_retry_for_s=10).pipeline.retries == 4  # 1+2+4+8
    assert load_settings(pipeline_max_retries=2, pipeline_retry_for_s=999).pipeline.retries == 2


def test_an_unreachable_store_is_unavailable_not_missing(tmp_path: Path) -> None:
    """S3 down: StoreUnavailable within seconds (Minio's client would wait minutes), the stage
    server answers UNAVAILABLE (so the step's task retries), and a missing key stays NOT_FOUND."""
    dead = S3ObjectStore(f"127.0.0.1:{free_port()}", "key", "secret-key", "bucket")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        dead.get_bytes("images/x")
    with pytest.raises(StoreUnavailable):
        dead.exists("images/x")
    assert time.monotonic() - started < 20
    settings = load_settings(store_kind="local", store_path=tmp_path)
    server = StageServer(build_stage("seg", settings, dead), settings)
    port = server.start(port=0, host="127.0.0.1")
    client = StageClient("seg", f"127.0.0.1:{port}", stub_class("seg"), settings)
    request = seg_pb2.SegmentRequest(image=image_ref("images/x", 4, 4),
                                      boxes=[box_to_proto([0, 0, 2, 2])])  # fmt: skip
    try:
        with pytest.raises(TransientStageError) as unavailable:
            client.call("Segment", request, timeout=30)
        assert unavailable.value.code == grpc.StatusCode.UNAVAILABLE
        assert "unreachable" in unavailable.value.details
    finally:
        client.close()
        server.stop(grace=0)
    assert issubclass(StoreUnavailable, Exception) and StoreUnavailable in StepTask.autoretry_for


BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class _AnsweringMner:
    def call(self, method: str, request: object, job_id: str = "") -> object:
        return mner_pb2.RecognizeResponse(model="fake@1")


def test_a_try_that_keeps_killing_its_worker_ends_as_poison(monkeypatch) -> None:
    """The same try of a step started more than RIVEG_PIPELINE_MAX_STARTS times (acks_late
    brought it back after its worker died) fails the post with the reason and keeps it on
    <prefix>.dead, instead of looping."""
    if not port_open("127.0.0.1", 5672):
        pytest.skip("RabbitMQ (127.0.0.1:5672) must run: .ci/run starts it")
    prefix = f"riveg-test-{uuid.uuid4().hex[:8]}"
    settings = load_settings(broker_url=BROKER, broker_queue_prefix=prefix, store_kind="local",
                             pipeline_max_starts=3)  # fmt: skip
    jobs = MemoryJobStore()
    jobs.claim("poison", new_record("job-poison", "poison"))
    fake = SimpleNamespace(settings=settings, store=None, jobs=jobs,
                           client=lambda stage: _AnsweringMner())  # fmt: skip
    monkeypatch.setattr("riveg.orchestration.runtime._runtime", fake)
    _stored_states(monkeypatch, {})  # no step of the post has finished
    state = {"id": "poison", "job_id": "job-poison", "text": "NASA", "entities": [],
             "image": {"key": "images/x", "width": 1, "height": 1}, "models": {},
             "timings_ms": {}}  # fmt: skip
    try:
        for _ in range(3):  # the worker "died" after each of these: the same try comes back
            assert TASKS["mner"].apply(args=[dict(state)], task_id="task-1").state == "SUCCESS"
        with pytest.raises(PostError, match="started 4 times"):
            TASKS["mner"].apply(args=[dict(state)], task_id="task-1", throw=True)
        record = jobs.get("job-poison")
        assert record["status"] == "failed" and "poison post: step mner" in record["error"]
        # Another try (a retry) of the same task counts apart.
        assert TASKS["mner"].apply(args=[dict(state)], task_id="task-2").state == "SUCCESS"
        with Connection(BROKER) as connection:
            dead = Queue(f"{prefix}.dead", Exchange(f"{prefix}.dead", "direct", durable=True),
                         routing_key="dead", durable=True)  # fmt: skip
            message = dead.bind(connection.default_channel).get(no_ack=True)
            assert message is not None and json.loads(message.body)["id"] == "poison"
            assert "started 4 times" in message.headers["x-riveg-error"]
    finally:
        time.sleep(1)  # the job's outcome is published from a pool thread
        delete_queues(BROKER, prefix)


class _DownJobs(MemoryJobStore):
    """Job records whose Redis is down: every read fails."""

    def get(self, job_id: str):  # type: ignore[override]
        raise redis.exceptions.ConnectionError("Connection refused")


def test_a_client_waits_on_the_job_record_and_falls_back_to_the_store(tmp_path: Path) -> None:
    """`riveg batch`/`analyze` wait on the job record and read the result from the store; with
    the records unreachable (Redis restarting) the store alone says when this job is done;
    ready() never raises, and get() ends with the outcome or a TimeoutError."""
    store = LocalObjectStore(tmp_path)
    jobs = MemoryJobStore()
    runtime = SimpleNamespace(jobs=jobs, store=store)
    jobs.update("job-1", **new_record("job-1", "post-1"))
    waiting = JobResult(runtime, "post-1", "job-1", poll_s=0)
    assert not waiting.ready()
    with pytest.raises(TimeoutError, match=r"has not ended after 0\.2 s"):
        waiting.get(timeout=0.2)
    store.put_json(result_key("post-1"), {"id": "post-1", "job_id": "job-1", "entities": []})
    jobs.update("job-1", status="done", result_key=result_key("post-1"))
    assert waiting.get(timeout=1)["job_id"] == "job-1"

    jobs.update("job-2", **new_record("job-2", "post-2"))
    jobs.update("job-2", status="failed", error="seg: PostError: post 'post-2': not an image")
    with pytest.raises(JobFailed, match=r"^seg: PostError: post 'post-2': not an image$"):
        JobResult(runtime, "post-2", "job-2", poll_s=0).get(timeout=1)

    runtime.jobs = _DownJobs()
    stale = JobResult(runtime, "post-1", "an-earlier-job", poll_s=0)
    assert not stale.ready()  # the stored result is another job's: not this one's outcome
    assert JobResult(runtime, "post-1", "job-1", poll_s=0).get(timeout=1)["id"] == "post-1"


class _RecordingStub:
    """A stub whose method records its deadline and, past it, fails as gRPC would."""

    def __init__(self, takes_s: float) -> None:
        self.takes_s = takes_s
        self.timeouts: list[float] = []

    def Recognize(self, request: object, timeout: float, metadata: object) -> object:
        self.timeouts.append(timeout)
        if self.takes_s > timeout:
            raise _DeadlineExceeded()
        return mner_pb2.RecognizeResponse(model="fake@1")


class _DeadlineExceeded(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"


def test_a_step_time_limit_is_every_stage_call_s_deadline() -> None:
    """Celery's thread pool cannot kill a step: its stage calls share its time limit as their
    gRPC deadline, and a call cut short by it (or made with nothing left) fails the step for
    good instead of being retried as a slow server would be."""
    settings = load_settings(grpc_timeout_s=60)
    client = StageClient("mner", f"127.0.0.1:{free_port()}", stub_class("mner"), settings)
    request = mner_pb2.RecognizeRequest(text="NASA")
    try:
        client.stub = _RecordingStub(takes_s=0.0)
        client.call("Recognize", request)
        with time_budget(2.0):
            client.call("Recognize", request)
        assert client.stub.timeouts[0] == 60 and 1.5 < client.stub.timeouts[1] <= 2.0
        client.stub = _RecordingStub(takes_s=5.0)
        with time_budget(1.0), pytest.raises(TimeBudgetSpent, match="cut short"):
            client.call("Recognize", request)
        with pytest.raises(TransientStageError):  # without a budget: the server was slow
            client.call("Recognize", request, timeout=1.0)
        with time_budget(0.0), pytest.raises(TimeBudgetSpent, match="not called"):
            client.call("Recognize", request)
        assert not issubclass(TimeBudgetSpent, TransientStageError)
    finally:
        client.close()


def _stored_states(monkeypatch: pytest.MonkeyPatch, states: dict[str, str]) -> None:
    """Task states as the result backend would give them (PENDING when absent)."""

    def state_of(task: StepTask, task_id: str) -> SimpleNamespace:
        return SimpleNamespace(state=states.get(task_id, "PENDING"))

    monkeypatch.setattr(StepTask, "AsyncResult", state_of)


def test_a_step_whose_result_is_stored_is_not_done_again(monkeypatch) -> None:
    """A step's message that comes back after its result was stored (broker restart before the
    acknowledgement) is skipped: Celery sent the next step before storing the result, so doing
    it again would only repeat the stage call and send the rest of the chain twice."""
    settings = load_settings(broker_url=BROKER, store_kind="local")
    calls: list[str] = []

    class _Counting(_AnsweringMner):
        def call(self, method: str, request: object, job_id: str = "") -> object:
            calls.append(method)
            return super().call(method, request, job_id)

    fake = SimpleNamespace(settings=settings, store=None, jobs=MemoryJobStore(),
                           client=lambda stage: _Counting())  # fmt: skip
    monkeypatch.setattr("riveg.orchestration.runtime._runtime", fake)
    stored = {"task-done": "SUCCESS"}
    _stored_states(monkeypatch, stored)
    state = {"id": "p", "job_id": "j", "text": "NASA", "entities": [],
             "image": {"key": "images/x", "width": 1, "height": 1}, "models": {},
             "timings_ms": {}}  # fmt: skip
    assert TASKS["mner"].apply(args=[dict(state)], task_id="task-new").state == "SUCCESS"
    assert TASKS["mner"].apply(args=[dict(state)], task_id="task-done").state == "IGNORED"
    assert calls == ["Recognize"]


def test_sending_a_message_rides_out_a_broker_restart_for_the_retry_time() -> None:
    for retry_for_s in (10.0, 300.0):
        policy = publish_retry_policy(retry_for_s)
        waits = [min(float(n), policy["interval_max"]) for n in range(policy["max_retries"])]
        assert sum(waits) >= retry_for_s > sum(waits[:-1])
    settings = load_settings(broker_url=BROKER)
    config = celery_config(settings)
    assert config["task_publish_retry_policy"] == publish_retry_policy(300.0)
    assert config["broker_connection_max_retries"] is None
    assert worker_config()["result_backend_always_retry"] is True


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_worker_s_job_records_wait_for_a_redis_that_restarts(tmp_path: Path) -> None:
    """A worker's job store waits for its Redis (a private one, stopped and started again on
    the same port) instead of failing the step; a client's store gives up within seconds."""
    server = PrivateRedis("redis", tmp_path)
    server.start()
    try:
        patient = RedisJobStore(server.url(), "riveg-jobs:t", 60, patience_s=60)
        impatient = RedisJobStore(server.url(), "riveg-jobs:t", 60)
        patient.update("job", **new_record("job", "post"))
        server.stop()
        outcome: dict[str, object] = {}

        def update() -> None:
            outcome["updated"] = patient.update("job", status="running", step="mner")

        waiting = threading.Thread(target=update)
        waiting.start()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            impatient.get("job")
        assert time.monotonic() - started < 10
        time.sleep(2)
        assert waiting.is_alive()  # still waiting for Redis
        server.start()
        waiting.join(timeout=30)
        assert outcome == {"updated": True}
        assert patient.get("job")["step"] == "mner"  # kept across the restart (append-only)
    finally:
        server.stop()


class _FlakyChain:
    """A chain whose sending fails while the broker is "down" (the first ``down`` tries)."""

    def __init__(self, sends: list[int], down: int) -> None:
        self.sends = sends
        self.down = down

    def apply_async(self) -> SimpleNamespace:
        self.sends.append(1)
        if len(self.sends) <= self.down:
            raise OperationalError("[Errno 111] Connection refused")
        return SimpleNamespace(id="task-id")


def test_a_post_submitted_during_an_outage_waits_for_it(tmp_path: Path, monkeypatch) -> None:
    """`riveg batch`/`analyze` submit through submit_patiently: a broker (or store, or job
    records) that is down is waited out; each try that could not be enqueued leaves its job
    failed ("not enqueued"), never looking in flight to a later resume; a bad post fails at
    once."""
    settings = load_settings(broker_url=BROKER, store_kind="local", store_path=tmp_path,
                             pipeline_retry_for_s=30)  # fmt: skip
    runtime = Runtime(settings, LocalObjectStore(tmp_path))
    runtime._jobs = jobs = MemoryJobStore()
    sends: list[int] = []
    monkeypatch.setattr(
        pipeline, "build_chain", lambda state, knowledge=False: _FlakyChain(sends, 2)
    )
    monkeypatch.setattr(pipeline, "wait_random_exponential", lambda **_: lambda state: 0.01)
    submission = submit_patiently(runtime, "NASA in Houston", b"\xff\xd8 an image", "post-1")
    assert len(sends) == 3 and submission.task.id == "task-id"
    records = sorted(jobs._jobs.values(), key=lambda r: r["status"])
    assert [r["status"] for r in records] == ["failed", "failed", "queued"]
    assert all("not enqueued: OperationalError" in r["error"] for r in records[:2])
    assert jobs.find("post-1")["job_id"] == submission.job_id  # the one in flight
    with pytest.raises(InvalidInput):
        submit_patiently(runtime, "", b"\xff\xd8 an image", "post-2")
    assert len(sends) == 3
