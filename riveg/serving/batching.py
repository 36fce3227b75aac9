"""A dynamic batcher for the stage servers (after Triton's dynamic batcher and Ray Serve's
``@serve.batch``): concurrent calls to one server wait up to ``max_queue_delay_ms`` after the
first of them arrived, or until ``max_batch_size`` are waiting, and are handed to the model
together.

Each call keeps its own deadline (one that has passed when its batch is formed is dropped with
:class:`DeadlineExpired`, not run) and its own outcome: ``run`` returns one result or exception
per item, and a batch that fails as a whole is run again one item at a time, so a bad item fails
its own call only. The function that runs a batch reads the model once, so a hot swap never
splits a batch across two models. Each batch is logged with its size and how long its calls
waited.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from riveg.core.logging import get_logger
from riveg.serving import metrics

log = get_logger("riveg.batching")

T = TypeVar("T")
R = TypeVar("R")
BatchFunction = Callable[[list[T]], Sequence[R | BaseException]]


class DeadlineExpired(TimeoutError):
    """The call's deadline passed while it waited for its batch: it was not run."""


@dataclass
class _Call(Generic[T]):
    item: T
    deadline: float | None
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class DynamicBatcher(Generic[T, R]):
    """Queues calls from many threads and runs them in batches on threads of its own.

    ``max_batch_size`` 1 turns batching off (each call runs alone, in arrival order).
    ``instances`` batches run at once (Triton's model instances): 1 for a model that uses the
    whole device; more for a backend that loops over the batch on one CPU core (GrabCut).
    """

    def __init__(
        self,
        name: str,
        run: BatchFunction,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        instances: int = 1,
    ) -> None:
        if max_batch_size < 1 or instances < 1:
            raise ValueError("max_batch_size and instances must be at least 1")
        self.name = name
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max(max_queue_delay_ms, 0.0) / 1000
        self._queue: deque[_Call[T]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(instances)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T, deadline: float | None = None) -> Future:
        """Queue one call; its future gets the item's result (or exception). ``deadline``: a
        ``time.monotonic()`` instant after which the call is dropped, not run."""
        call: _Call[T] = _Call(item, deadline)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            self._queue.append(call)
            self._cond.notify()
        return call.future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Run one item through the batcher and wait for its result (``timeout``: its deadline
        in seconds from now)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.submit(item, deadline).result()

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the batcher's threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def _next_batch(self) -> list[_Call[T]] | None:
        """Wait for a first call, then for more until the batch is full or the first call has
        waited ``max_queue_delay_s``; None once closed and drained."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0].arrived
            while len(self._queue) < self.max_batch_size and not self._closed:
                left = first + self.max_queue_delay_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            count = min(len(self._queue), self.max_batch_size)
            return [self._queue.popleft() for _ in range(count)]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            formed = time.monotonic()
            live = []
            for call in batch:
                if call.deadline is not None and call.deadline <= formed:
                    call.future.set_exception(
                        DeadlineExpired(
                            f"the call waited {formed - call.arrived:.3f} s for "
                            "its batch and its deadline passed"
                        )
                    )
                elif call.future.set_running_or_notify_cancel():
                    live.append(call)
            if live:
                self._run(live, formed)

    def _run(self, calls: list[_Call[T]], formed: float) -> None:
        waits_ms = [round((formed - call.arrived) * 1000, 1) for call in calls]
        started = time.perf_counter()
        try:
            outcomes: Sequence[Any] = self.run([call.item for call in calls])
            if len(outcomes) != len(calls):
                raise RuntimeError(f"{len(outcomes)} results for a batch of {len(calls)}")
        except Exception as exc:
            if len(calls) == 1:
                outcomes = [exc]
            else:  # find the item to blame: each call alone, so the others still answer
                log.warning("batch failed; running its calls one by one", batcher=self.name,
                            size=len(calls), error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                outcomes = [self._alone(call.item) for call in calls]
        ms = round((time.perf_counter() - started) * 1000, 1)
        mean_wait = round(sum(waits_ms) / len(calls), 1)
        log.info("batch done", batcher=self.name, size=len(calls), ms=ms,
                 wait_ms_max=max(waits_ms), wait_ms_mean=mean_wait)  # fmt: skip
        metrics.BATCH_SIZE.labels(self.name).observe(len(calls))
        for wait in waits_ms:
            metrics.QUEUE_WAIT.labels(self.name).observe(wait / 1000)
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)

    def _alone(self, item: T) -> Any:
        try:
            return self.run([item])[0]
        except Exception as exc:
            return exc
