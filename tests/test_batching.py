"""The dynamic batcher: batches bounded by size and by the first call's wait, per-call
deadlines and per-call errors, and one model per batch across a hot swap."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from riveg.serving.batching import DeadlineExpired, DynamicBatcher


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


def test_a_swap_while_batches_run_never_splits_a_batch() -> None:
    """The batch function reads the model once per batch: a swap lands between batches."""
    current = {"model": "a"}
    seen: list[set[str]] = []

    def run(items: list[int]) -> list[tuple[str, int]]:
        model = current["model"]  # read once for the whole batch
        used = set()
        for _item in items:
            time.sleep(0.005)
            used.add(model)
        seen.append(used)
        return [(model, item) for item in items]

    batcher = DynamicBatcher("t", run, max_batch_size=8, max_queue_delay_ms=5)
    swapper = threading.Timer(0.05, lambda: current.update(model="b"))
    swapper.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(lambda i: batcher(i), range(200)))
    finally:
        batcher.close()
    assert {model for model, _ in outcomes} == {"a", "b"}
    assert all(len(models) == 1 for models in seen)
    assert [item for _, item in outcomes] == list(range(200))


def test_a_closed_batcher_refuses_new_calls_and_finishes_queued_ones() -> None:
    run = Recorder(takes_s=0.05)
    batcher = DynamicBatcher("t", run, max_batch_size=2, max_queue_delay_ms=0)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    assert [f.result(timeout=5) for f in futures] == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(9)
