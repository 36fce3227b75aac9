"""The dynamic batcher: batches bounded by size and by the first call's wait, per-call
deadlines and per-call errors, and one model per batch across a hot swap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import grpc
import numpy as np
import pytest
from PIL import Image

from riveg.core.config import load_settings
from riveg.core.images import encode_png
from riveg.core.storage import open_store
from riveg.serving.batching import DeadlineExpired, DynamicBatcher
from riveg.serving.client import StageClient, TransientStageError
from riveg.serving.messages import entity_to_proto, image_ref
from riveg.serving.server import StageServer
from riveg.serving.stages import build_stage, stub_class
from riveg.v1 import ve_pb2
from services.llm.backends import LLM_BACKENDS
from services.mner.backends import MNER_BACKENDS
from services.seg.backends import SEG_BACKENDS
from services.ve.backends import VE_BACKENDS, VeBackend
from services.vg.backends import VG_BACKENDS
from tests.conftest import SAMPLE_IMAGE


class Recorder:
    """A batch function that records each batch and answers each item doubled; an item "bad"
    makes the whole batch fail (as a model given one broken input would)."""

    def __init__(self, takes_s: float = 0.0) -> None:
        self.batches: list[list[object]] = []
        self.takes_s = takes_s
        self.lock = threading.Lock()

    def __call__(self, items: list[object]) -> list[object]:
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.takes_s)
        if "bad" in items:
            raise ValueError("bad input")
        return [item * 2 for item in items]  # type: ignore[operator]


def _together(batcher: DynamicBatcher, items: list[object]) -> list[object]:
    """Submit the items from as many threads at once; their results (or exceptions)."""
    barrier = threading.Barrier(len(items))

    def one(item: object) -> object:
        barrier.wait()
        try:
            return batcher(item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items))


def test_concurrent_calls_run_together_up_to_the_max_batch_size() -> None:
    run = Recorder()
    batcher = DynamicBatcher("t", run, max_batch_size=4, max_queue_delay_ms=200)
    try:
        assert _together(batcher, list(range(8))) == [i * 2 for i in range(8)]
    finally:
        batcher.close()
    assert sorted(len(b) for b in run.batches) == [4, 4]
    assert sorted(x for b in run.batches for x in b) == list(range(8))


def test_a_lone_call_waits_at_most_the_queue_delay() -> None:
    run = Recorder()
    batcher = DynamicBatcher("t", run, max_batch_size=8, max_queue_delay_ms=50)
    try:
        started = time.monotonic()
        assert batcher(21) == 42
        waited = time.monotonic() - started
    finally:
        batcher.close()
    assert 0.045 <= waited < 0.5, waited
    assert run.batches == [[21]]


def test_max_batch_size_one_turns_batching_off() -> None:
    run = Recorder()
    batcher = DynamicBatcher("t", run, max_batch_size=1, max_queue_delay_ms=1000)
    try:
        started = time.monotonic()
        assert _together(batcher, [1, 2, 3]) == [2, 4, 6]
        assert time.monotonic() - started < 0.5  # no waiting for company
    finally:
        batcher.close()
    assert [len(b) for b in run.batches] == [1, 1, 1]


def test_a_call_whose_deadline_passed_in_the_queue_is_dropped_not_run() -> None:
    run = Recorder(takes_s=0.3)
    batcher = DynamicBatcher("t", run, max_batch_size=1, max_queue_delay_ms=0)
    try:
        first = batcher.submit(1)
        time.sleep(0.05)  # the first call is running: the next ones queue behind it
        expired = batcher.submit(2, deadline=time.monotonic() + 0.1)
        patient = batcher.submit(3, deadline=time.monotonic() + 10)
        assert first.result() == 2 and patient.result() == 6
        with pytest.raises(DeadlineExpired, match="deadline passed"):
            expired.result()
    finally:
        batcher.close()
    assert run.batches == [[1], [3]]


def test_a_bad_item_fails_its_own_call_only() -> None:
    run = Recorder()
    batcher = DynamicBatcher("t", run, max_batch_size=4, max_queue_delay_ms=200)
    try:
        outcomes = _together(batcher, [1, "bad", 3, 4])
    finally:
        batcher.close()
    assert outcomes[0] == 2 and outcomes[2] == 6 and outcomes[3] == 8
    assert isinstance(outcomes[1], ValueError)
    assert len(run.batches[0]) == 4 and all(len(b) == 1 for b in run.batches[1:])


def test_per_item_exceptions_returned_by_the_batch_function_stay_per_item() -> None:
    def run(items: list[int]) -> list[object]:
        return [KeyError(i) if i % 2 else i for i in items]

    batcher = DynamicBatcher("t", run, max_batch_size=4, max_queue_delay_ms=200)
    try:
        outcomes = _together(batcher, [0, 1, 2, 3])
    finally:
        batcher.close()
    assert outcomes[0] == 0 and outcomes[2] == 2
    assert isinstance(outcomes[1], KeyError) and isinstance(outcomes[3], KeyError)


def test_instances_run_batches_side_by_side() -> None:
    run = Recorder(takes_s=0.3)
    batcher = DynamicBatcher("t", run, max_batch_size=1, max_queue_delay_ms=0, instances=2)
    try:
        started = time.monotonic()
        assert _together(batcher, [1, 2]) == [2, 4]
        assert time.monotonic() - started < 0.55  # two at once, not one after the other
    finally:
        batcher.close()


def test_a_closed_batcher_refuses_new_calls_and_finishes_queued_ones() -> None:
    run = Recorder(takes_s=0.05)
    batcher = DynamicBatcher("t", run, max_batch_size=2, max_queue_delay_ms=0)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=5) for f in futures] == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(9)


class _Tagging(VeBackend):
    """A VE backend that scores every entity with its own version number and records the
    batches it ran, so a test can see which model answered which call."""

    name = "tagging"
    version = "1"
    batches: ClassVar[list[tuple[str, int]]] = []
    max_batch_size: ClassVar[int | None] = None  # batched as the settings say

    def _load(self) -> None:
        pass

    def entail(self, image: np.ndarray, entities: list[dict]) -> list[tuple[bool, float]]:
        time.sleep(0.002)
        return [(True, float(self.version))] * len(entities)

    def entail_batch(self, items: list) -> list:
        self.batches.append((self.version, len(items)))
        return super().entail_batch(items)


@pytest.fixture
def tagging_server(tmp_path: Path) -> Iterator[tuple[StageServer, StageClient, str]]:
    VE_BACKENDS.register("tagging-test")(_Tagging)
    _Tagging.batches.clear()
    settings = load_settings(store_kind="local", store_path=tmp_path, ve_backend="tagging-test",
                             ve_max_queue_delay_ms=20, ve_max_batch_size=8)  # fmt: skip
    store = open_store(settings)
    key = store.put_bytes("images/x.png", encode_png(np.zeros((16, 16, 3), np.uint8)), "image/png")
    server = StageServer(build_stage("ve", settings, store), settings)
    port = server.start(port=0, host="127.0.0.1")
    client = StageClient("ve", f"127.0.0.1:{port}", stub_class("ve"), settings)
    try:
        yield server, client, key
    finally:
        client.close()
        server.stop(grace=0)
        VE_BACKENDS._factories.pop("tagging-test")


def test_a_backend_that_runs_calls_one_at_a_time_gets_them_without_the_queue_delay(
    tagging_server,
) -> None:
    """Batch limits: the manifest's, else the backend's own cap, else the settings. The default
    VE backend (MediaPipe, one call at a time) gets batches of 1 and no delay to wait out."""
    server, _, _ = tagging_server
    servicer = server.spec.servicer
    assert servicer.batch_limits() == (8, 20.0)  # the settings: _Tagging batches
    backend = servicer.models.current
    backend.max_batch_size = 1
    try:
        assert servicer.batch_limits() == (1, 0.0)
        backend.batching = {"max_batch_size": 4}
        assert servicer.batch_limits() == (4, 20.0)  # a version's manifest wins
    finally:
        del backend.max_batch_size
        backend.batching = None
    for registry, key in ((VE_BACKENDS, "person"), (VG_BACKENDS, "person"),
                          (SEG_BACKENDS, "grabcut"), (SEG_BACKENDS, "selfie")):  # fmt: skip
        assert registry._factories[key].max_batch_size == 1, key
    for registry, key in ((VE_BACKENDS, "clip"), (VE_BACKENDS, "itm"), (VG_BACKENDS, "owl"),
                          (VG_BACKENDS, "grounding-dino"), (SEG_BACKENDS, "sam")):  # fmt: skip
        assert registry._factories[key].max_batch_size is None, key


def _entail(client: StageClient, key: str) -> ve_pb2.EntailResponse:
    request = ve_pb2.EntailRequest(image=image_ref(key, 16, 16),
                                   entities=[entity_to_proto({"text": "NASA", "type": "ORG",
                                                              "start": 0, "end": 4})])  # fmt: skip
    return client.call("Entail", request, timeout=30)


def test_a_server_batches_concurrent_calls_and_a_swap_never_mixes_models(tagging_server) -> None:
    """16 callers at once: the server hands the model batches of several calls; a hot swap in
    the middle lands between batches, and every answer's scores come from the model it names."""
    server, client, key = tagging_server
    swapper = threading.Timer(0.15, lambda: server.spec.models.load("tagging-test@2"))
    swapper.start()
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: _entail(client, key), range(400)))
    swapper.join()
    models = {reply.model for reply in replies}
    assert models == {"tagging@1", "tagging-test@2"}, models  # the start-up one, the swapped-in one
    for reply in replies:  # the scores are the version of the model the reply names
        assert reply.results[0].score == float(reply.model.rsplit("@", 1)[1])
    sizes = [size for _, size in _Tagging.batches]
    assert max(sizes) > 1 and sum(sizes) == 400, sizes


def test_a_call_waiting_past_its_deadline_is_dropped_with_deadline_exceeded(
    tagging_server,
) -> None:
    _, client, key = tagging_server
    request = ve_pb2.EntailRequest(image=image_ref(key, 16, 16),
                                   entities=[entity_to_proto({"text": "NASA", "type": "ORG",
                                                              "start": 0, "end": 4})])  # fmt: skip
    with pytest.raises(TransientStageError) as late:
        client.call("Entail", request, timeout=0.01)  # shorter than the queue delay
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


POSTS = [
    "Astronaut Eileen Collins poses at NASA 's Johnson Space Center in Houston .",
    "Eileen Collins and Barack Obama talk about the shuttle Discovery .",
    "RT @nasa : Great photo from the Kennedy Space Center in Florida today !",
    "Manchester United beat Chelsea at Old Trafford on Sunday",
    "no names here",
]


def _spans(posts: list[list[dict]]) -> list[list[tuple]]:
    return [[(e["text"], e["start"], e["end"], e["type"]) for e in post] for post in posts]


@pytest.mark.slow
def test_batched_results_equal_one_at_a_time_for_the_offline_backends() -> None:
    """What a batch answers is what each call alone answers: the same entities for MNER (CRF,
    spaCy; the CRF's confidence within 1e-5, padding changes float sums), exactly for the
    rule-based vision backends and GrabCut, and the same generated text for Gemma's greedy
    decoding with left padding."""
    settings = load_settings(llm_cache=False)
    image = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB"))
    flipped = np.ascontiguousarray(image[:, ::-1])
    entities = [[{"text": "Eileen Collins", "type": "PER"}, {"text": "NASA", "type": "ORG"}],
                [{"text": "Houston", "type": "LOC"}]]  # fmt: skip
    for key in ("crf", "spacy"):
        mner = MNER_BACKENDS.create(key, settings)
        mner.load()
        batched, alone = mner.recognize(POSTS), [mner.recognize([post])[0] for post in POSTS]
        assert _spans(batched) == _spans(alone), key  # the same entities, exactly
        scores = [e.get("score", 1.0) for post in batched for e in post]
        assert scores == pytest.approx([e.get("score", 1.0) for p in alone for e in p], abs=1e-5)
    gemma = LLM_BACKENDS.create("gemma", settings)
    gemma.load()
    items = [(POSTS[0], entities[0], ""), (POSTS[1], entities[1], ""), (POSTS[4], [], "")]
    assert gemma.expand_batch(items) == [gemma.expand(*item) for item in items]
    pictures = [(image, entities[0]), (flipped, entities[1])]
    for registry, key, method in ((VE_BACKENDS, "person", "entail"),
                                  (VE_BACKENDS, "groundability", "entail"),
                                  (VG_BACKENDS, "person", "ground")):  # fmt: skip
        backend = registry.create(key, settings)
        backend.load()
        batched = getattr(backend, f"{method}_batch")(pictures)
        assert batched == [getattr(backend, method)(*item) for item in pictures], key
    boxes = [(image, [[100.0, 50.0, 400.0, 500.0]]), (flipped, [[10.0, 10.0, 200.0, 300.0]])]
    for key in ("grabcut", "selfie"):
        seg = SEG_BACKENDS.create(key, settings)
        seg.load()
        for batched, alone in zip(seg.segment_batch(boxes), [seg.segment(*b) for b in boxes],
                                  strict=True):  # fmt: skip
            assert all(np.array_equal(a, b) for a, b in zip(batched, alone, strict=True)), key
