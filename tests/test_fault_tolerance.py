"""Riding out faults: `riveg up` restarts a child that dies (after a wait that doubles while it
keeps dying soon after its start); steps are retried for minutes, not seconds; an object store
that is down is told apart from a missing object, and retried."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from kombu import Connection, Exchange, Queue

from riveg.core.config import load_settings
from riveg.core.storage import S3ObjectStore, StoreUnavailable
from riveg.orchestration.jobs import MemoryJobStore, new_record
from riveg.orchestration.launcher import Launcher, free_port, port_open
from riveg.orchestration.tasks import TASKS, PostError, StepTask
from riveg.serving.client import StageClient, TransientStageError
from riveg.serving.messages import box_to_proto, image_ref
from riveg.serving.server import StageServer
from riveg.serving.stages import build_stage, stub_class
from riveg.v1 import mner_pb2, seg_pb2
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
