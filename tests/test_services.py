"""Each stage service over real gRPC on loopback, with its real offline default backend."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from riveg.core.images import mask_to_rle, rle_to_mask
from riveg.core.stages import STAGE_TABLE, STAGES
from riveg.serving.client import StageCallError
from riveg.serving.messages import box_to_proto, entity_to_proto, image_ref
from riveg.serving.stages import connect, servicer_class, stub_class
from riveg.v1 import common_pb2, llm_pb2, mner_pb2, seg_pb2, ve_pb2, vg_pb2
from tests.conftest import SAMPLE_TEXT
from tests.support.processes import free_port

SERVICE_NAMES = {name: stage.service_name for name, stage in STAGE_TABLE.items()}
FACE_CENTRE = (225, 120)  # the astronaut's face in samples/astronaut.jpg (512 x 512)


@pytest.fixture(scope="module")
def sample_ref(cluster, sample_bytes):
    key = cluster.store.put_bytes("images/test-sample", sample_bytes)
    return image_ref(key, 512, 512)


def _entity(text: str, kind: str) -> dict:
    start = SAMPLE_TEXT.index(text)
    return {"text": text, "start": start, "end": start + len(text), "type": kind}


@pytest.mark.parametrize("stage", sorted(SERVICE_NAMES))
def test_health_reflection_and_model_admin(cluster, stage: str) -> None:
    client = cluster.client(stage)
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", SERVICE_NAMES[stage]):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    listed = {s.name for r in replies for s in r.list_services_response.service}
    assert {SERVICE_NAMES[stage], "riveg.v1.ModelAdmin", "grpc.health.v1.Health"} <= listed
    current = client.admin.Current(common_pb2.CurrentModelRequest(), timeout=5)
    assert current.ready and re.fullmatch(r"[\w.\-]+@[\w.\-]+", current.model)


def test_mner_finds_typed_entities_with_offsets(cluster) -> None:
    reply = cluster.client("mner").call("Recognize", mner_pb2.RecognizeRequest(text=SAMPLE_TEXT))
    found = {(e.text, e.type) for e in reply.entities}
    assert ("NASA", "ORG") in found
    assert any(t.endswith("Eileen Collins") and k == "PER" for t, k in found)
    for entity in reply.entities:
        assert SAMPLE_TEXT[entity.start : entity.end] == entity.text
        assert entity.type in ("PER", "LOC", "ORG", "MISC")
    assert reply.model.startswith("crf")  # the shipped encoder + CRF tagger is the default


def test_spacy_mner_backend_stays_available(embedded_settings) -> None:
    from services.mner.backends import MNER_BACKENDS

    backend = MNER_BACKENDS.create("spacy", embedded_settings)
    backend.load()
    (entities,) = backend.recognize([SAMPLE_TEXT])
    assert ("NASA", "ORG") in {(e["text"], e["type"]) for e in entities}
    assert backend.model.startswith("spacy")


def test_mner_refuses_empty_text(cluster) -> None:
    with pytest.raises(StageCallError) as error:
        cluster.client("mner").call("Recognize", mner_pb2.RecognizeRequest(text="   "))
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in error.value.details


def test_llm_expands_each_entity_into_a_referring_expression(cluster) -> None:
    entities = [_entity("Eileen Collins", "PER"), _entity("NASA", "ORG")]
    request = llm_pb2.ExpandRequest(
        text=SAMPLE_TEXT, entities=[entity_to_proto(e) for e in entities]
    )
    reply = cluster.client("llm").call("Expand", request)
    assert [e.text for e in reply.entities] == ["Eileen Collins", "NASA"]
    for entity in reply.entities:
        assert re.fullmatch(rf"{re.escape(entity.text)}\({entity.type}\)(-[^\n]{{1,80}})?",
                            entity.expression), entity.expression  # fmt: skip
    assert reply.model.startswith("gemma-3-270m")
    knowledge = cluster.client("llm").call("Knowledge", llm_pb2.KnowledgeRequest(text=SAMPLE_TEXT))
    assert knowledge.knowledge.strip() and "\n" not in knowledge.knowledge


def test_llm_server_refuses_a_call_with_too_little_deadline_left(cluster) -> None:
    """The LLM *server* refuses a call with less than MIN_DEADLINE_S (0.05 s) left of its
    deadline: DEADLINE_EXCEEDED with check_deadline's "<s>s left of the deadline", before any
    model (or cache) time. A 0.04 s deadline reaches the server over loopback; a try that
    expired on the client first ("Deadline Exceeded") is tried again, a few times at most."""
    from services.llm.server import MIN_DEADLINE_S

    request = llm_pb2.ExpandRequest(
        text=SAMPLE_TEXT, entities=[entity_to_proto(_entity("Eileen Collins", "PER"))]
    )
    llm = cluster.client("llm")
    llm.call("Expand", request)  # a cached answer now waits: still refused below
    refusals, client_expiries = [], []
    for _ in range(10):
        with pytest.raises(StageCallError) as error:
            llm.call("Expand", request, timeout=0.8 * MIN_DEADLINE_S)
        assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        if "left of the deadline" in error.value.details:
            refusals.append(error.value.details)
            break
        client_expiries.append(error.value.details)
    assert refusals, f"the server never refused the call; client-side only: {client_expiries}"
    left = float(re.match(r"(-?\d+\.\d+)s left of the deadline", refusals[0]).group(1))
    assert left <= MIN_DEADLINE_S  # the message rounds to 0.01 s


def test_llm_server_deadline_floor_is_what_decides(cluster, monkeypatch) -> None:
    """With the floor raised to 30 s, a roomy 10 s deadline is refused by the server (no race
    with the client: the refusal comes long before 10 s) and a 60 s one is served."""
    import services.llm.server as llm_server

    monkeypatch.setattr(llm_server, "MIN_DEADLINE_S", 30.0)
    request = llm_pb2.ExpandRequest(
        text=SAMPLE_TEXT, entities=[entity_to_proto(_entity("NASA", "ORG"))]
    )
    llm = cluster.client("llm")
    started = time.monotonic()
    with pytest.raises(StageCallError) as error:
        llm.call("Expand", request, timeout=10)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert re.fullmatch(r"(9|10)\.\d\ds left of the deadline", error.value.details)
    assert time.monotonic() - started < 5
    assert [e.text for e in llm.call("Expand", request, timeout=60).entities] == ["NASA"]


class _LateContext:
    """The parts of a grpc.ServicerContext the server's interceptor uses."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self):
        return (("x-job-id", "job-late"),)

    def time_remaining(self) -> float:
        return self.remaining

    def abort(self, code: grpc.StatusCode, details: str):
        self.aborted = (code, details)
        raise grpc.RpcError(details)

    def code(self):
        return self.aborted[0] if self.aborted else None


def test_server_interceptor_refuses_a_call_whose_deadline_passed_on_arrival() -> None:
    """Every stage server's interceptor aborts a call that arrives with no time left
    (DEADLINE_EXCEEDED, "deadline passed on arrival") without running the handler; with time
    left the handler runs."""
    from types import SimpleNamespace

    from riveg.serving.server import _CallContextInterceptor

    ran = []

    def continuation(details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: ran.append(request))

    details = SimpleNamespace(method="/riveg.v1.LlmService/Expand", invocation_metadata=())
    handler = _CallContextInterceptor("vg").intercept_service(continuation, details)
    for remaining in (0.0, -0.5):
        late = _LateContext(remaining)
        with pytest.raises(grpc.RpcError):
            handler.unary_unary("request", late)
        assert late.aborted == (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed on arrival")
    assert ran == []
    in_time = _LateContext(5.0)
    handler.unary_unary("request", in_time)
    assert ran == ["request"] and in_time.aborted is None


def test_ve_and_vg_ground_the_person_only(cluster, sample_ref) -> None:
    entities = [entity_to_proto(_entity("Eileen Collins", "PER")),
                entity_to_proto(_entity("NASA", "ORG"))]  # fmt: skip
    entail = cluster.client("ve").call(
        "Entail", ve_pb2.EntailRequest(image=sample_ref, entities=entities)
    )
    assert [r.groundable for r in entail.results] == [True, False]
    assert 0.5 <= entail.results[0].score <= 1.0 and entail.results[1].score == 0.0
    ground = cluster.client("vg").call(
        "Ground", vg_pb2.GroundRequest(image=sample_ref, entities=entities)
    )
    person, org = ground.results
    assert person.found and not org.found
    box = person.box
    assert 0 <= box.x1 < FACE_CENTRE[0] < box.x2 <= 512
    assert 0 <= box.y1 < FACE_CENTRE[1] < box.y2 <= 512
    assert (box.x2 - box.x1) * (box.y2 - box.y1) > 0.3 * 512 * 512  # the body, not just the face


def test_vision_services_run_the_model_once_per_image(embedded, sample_ref, monkeypatch) -> None:
    detector = embedded.servers["vg"].spec.backend.detector
    calls = []
    original = detector.detect
    monkeypatch.setattr(detector, "detect", lambda image: calls.append(1) or original(image))
    entities = [entity_to_proto(_entity(t, "PER")) for t in ("Eileen Collins", "Discovery")]
    reply = embedded.runtime.client("vg").call(
        "Ground", vg_pb2.GroundRequest(image=sample_ref, entities=entities)
    )
    assert len(reply.results) == 2 and all(r.found for r in reply.results)
    assert calls == [1]


def test_vision_services_report_bad_images(cluster) -> None:
    cluster.store.put_bytes("images/not-an-image", b"these bytes are text, not pixels")
    entity = [entity_to_proto(_entity("Eileen Collins", "PER"))]
    with pytest.raises(StageCallError) as bad:
        cluster.client("ve").call(
            "Entail", ve_pb2.EntailRequest(image=image_ref("images/not-an-image", 1, 1),
                                           entities=entity))  # fmt: skip
    assert (
        bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not an image" in bad.value.details
    )
    with pytest.raises(StageCallError) as missing:
        cluster.client("vg").call(
            "Ground", vg_pb2.GroundRequest(image=image_ref("images/absent", 1, 1), entities=entity)
        )
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_seg_masks_have_the_image_size_and_follow_the_box(cluster, sample_ref) -> None:
    boxes = [[150, 50, 300, 200], [0, 15, 512, 512]]
    reply = cluster.client("seg").call(
        "Segment", seg_pb2.SegmentRequest(image=sample_ref, boxes=[box_to_proto(b) for b in boxes])
    )
    assert len(reply.masks) == 2
    for box, message in zip(boxes, reply.masks, strict=True):
        mask = rle_to_mask({"size": [message.height, message.width], "counts": message.rle_counts})
        assert mask.shape == (512, 512)
        x1, y1, x2, y2 = box
        inside = mask[y1:y2, x1:x2].sum()
        assert inside == mask.sum() > 0.15 * (x2 - x1) * (y2 - y1)
    keyed = cluster.client("seg").call(
        "Segment",
        seg_pb2.SegmentRequest(
            image=sample_ref, boxes=[box_to_proto(boxes[0])], output_prefix="masks/test"
        ),
    )
    assert keyed.masks[0].png_key == "masks/test/0.png"
    assert cluster.store.exists("masks/test/0.png")


def test_rle_round_trip() -> None:
    mask = np.zeros((7, 5), dtype=np.uint8)
    mask[2:5, 1:4] = 1
    rle = mask_to_rle(mask)
    assert rle["size"] == [7, 5] and isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle), mask)


def test_message_size_is_capped(cluster) -> None:
    huge = "x" * (cluster.settings.grpc.max_message_mb * 1024 * 1024 + 10)
    with pytest.raises(StageCallError) as error:
        cluster.client("mner").call("Recognize", mner_pb2.RecognizeRequest(text=huge))
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("stage", STAGES)
def test_registry_resolves_every_stage(stage: str) -> None:
    """Each declared stage resolves to its generated stub and to a servicer of its own folder
    that serves the declared proto service."""
    assert stub_class(stage).__name__ == f"{STAGE_TABLE[stage].service}Stub"
    servicer = servicer_class(stage)
    assert servicer.__module__ == f"services.{stage}.server" and servicer.stage == stage
    assert any(base.__name__ == f"{STAGE_TABLE[stage].service}Servicer" for base in servicer.mro())


def test_sigterm_drains_in_flight_calls_and_logs_the_job_id(tmp_path: Path, sample_bytes) -> None:
    """A real `riveg serve seg` process: SIGTERM while a call runs; the call still succeeds."""
    from riveg.core.config import load_settings
    from riveg.core.storage import LocalObjectStore

    store_path = tmp_path / "store"
    LocalObjectStore(store_path).put_bytes("images/big", sample_bytes)
    port = free_port()
    env = {**os.environ, "RIVEG_STORE_KIND": "local", "RIVEG_STORE_PATH": str(store_path),
           "RIVEG_SEG_ADDR": f"127.0.0.1:{port}", "RIVEG_LOG_FORMAT": "json",
           "RIVEG_GRPC_SHUTDOWN_GRACE_S": "120", "RIVEG_SEG_BACKEND": "grabcut"}  # fmt: skip
    riveg = str(Path(sys.executable).parent / "riveg")
    process = subprocess.Popen([riveg, "serve", "seg"], env=env, stderr=subprocess.PIPE, text=True)
    settings = load_settings(seg_addr=f"127.0.0.1:{port}")
    client = connect("seg", settings)
    try:
        client.wait_ready(timeout=60)
        boxes = [box_to_proto([0, 0, 512, 512])] * 12  # a few seconds of GrabCut
        outcome: dict = {}

        def call() -> None:
            request = seg_pb2.SegmentRequest(image=image_ref("images/big", 512, 512), boxes=boxes)
            try:
                outcome["reply"] = client.call("Segment", request, job_id="job-sigterm-42")
                outcome["replied_at"] = time.monotonic()
            except StageCallError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        signalled_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        caller.join(timeout=60)
        assert "error" not in outcome, outcome.get("error")
        assert len(outcome["reply"].masks) == 12
        assert outcome["replied_at"] > signalled_at, "the call was not in flight at SIGTERM"
        assert process.wait(timeout=30) == 0
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
    logs = process.stderr.read()
    assert '"job_id": "job-sigterm-42"' in logs
    assert "server stopped" in logs
