"""Job records: what became of each submitted post, findable by job id and by post id.

A record is created when a post is submitted (``queued``), updated by the pipeline's steps as
they start (``running`` with the step) and when the job ends (``done`` with the result's key, or
``failed`` with the error). A post id (or an idempotency key) is claimed once: submitting it
again finds the existing job instead of starting a second one.

Embedded mode keeps the records in this process (:class:`MemoryJobStore`); with a broker they
live in the result backend's Redis (:class:`RedisJobStore`), shared by the gateway and every
worker.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from riveg.core.config import Settings

Record = dict[str, Any]
REDIS_RETRY_MAX_WAIT_S = 5.0
"""Longest wait between two tries of a Redis command while Redis is unreachable."""
ACTIVE = ("queued", "running")
FINAL = ("done", "failed")


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


SAFE_ID = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,199}")


def result_key(post_id: str) -> str:
    """The object key of a post's result, derived from its id: the id itself when it is made of
    letters, digits and ``._@-`` (the usual tweet ids); otherwise those characters of it with a
    digest of the whole id, so that every id has its own key and no key needs escaping."""
    if SAFE_ID.fullmatch(post_id):
        return f"results/posts/{post_id}.json"
    readable = re.sub(r"[^A-Za-z0-9._@-]+", "_", post_id)[:80].lstrip(".")
    digest = hashlib.sha256(post_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"results/posts/{readable or 'id'}~{digest}.json"


def new_record(
    job_id: str, post_id: str, callback_url: str | None = None, image_key: str | None = None
) -> Record:
    """The record of a job just submitted."""
    return {
        "job_id": job_id,
        "id": post_id,
        "status": "queued",
        "step": None,
        "error": None,
        "submitted_at": now(),
        "finished_at": None,
        "result_key": None,
        "callback_url": callback_url,
        "image_key": image_key,
    }


class JobStore(ABC):
    """Job records by job id, the claim of each post id, and the backlog (jobs not ended)."""

    @abstractmethod
    def claim(self, key: str, record: Record) -> tuple[Record, bool]:
        """Create ``record`` under the idempotency ``key`` unless the key names a job already:
        (the key's job, True when it is this new one)."""

    @abstractmethod
    def get(self, job_id: str) -> Record | None:
        """The job's record, or None."""

    @abstractmethod
    def find(self, key: str) -> Record | None:
        """The record of the job that claimed ``key`` (a post id or idempotency key)."""

    @abstractmethod
    def update(self, job_id: str, /, **fields: Any) -> bool:
        """Change fields of a job's record (created if missing); a final status ends it. A
        ``status`` change to a job that has ended already is not made (a redelivered step must
        not revive it, a second end must not notify twice): False then."""

    @abstractmethod
    def link(self, key: str, job_id: str, replace: bool = False) -> None:
        """Make ``key`` (a post id) find ``job_id`` too: only if it finds nothing yet, unless
        ``replace``."""

    @abstractmethod
    def release(self, job_id: str, *keys: str) -> None:
        """Forget ``job_id`` and the ``keys`` that find it (its submission failed before it
        ran)."""

    @abstractmethod
    def backlog(self) -> int:
        """How many jobs are queued or running."""

    @abstractmethod
    def count_start(self, task_id: str, attempt: int) -> int:
        """Count a start of try ``attempt`` of task ``task_id``: how many times it has started.
        More than one: the message came back because a worker died running it."""


class MemoryJobStore(JobStore):
    """Records in this process (embedded mode); ended jobs are forgotten after ``ttl_s``."""

    def __init__(self, ttl_s: float = 7 * 86400) -> None:
        self.ttl_s = ttl_s
        self._jobs: dict[str, Record] = {}
        self._keys: dict[str, str] = {}
        self._ended: deque[tuple[float, str]] = deque()
        self._starts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _forget_expired(self) -> None:
        while self._ended and self._ended[0][0] < time.monotonic() - self.ttl_s:
            _, job_id = self._ended.popleft()
            self._jobs.pop(job_id, None)
            for key in [k for k, v in self._keys.items() if v == job_id]:
                del self._keys[key]

    def claim(self, key: str, record: Record) -> tuple[Record, bool]:
        with self._lock:
            self._forget_expired()
            existing = self._keys.get(key)
            if existing is not None and existing in self._jobs:
                return dict(self._jobs[existing]), False
            self._keys[key] = record["job_id"]
            self._jobs[record["job_id"]] = dict(record)
            return dict(record), True

    def get(self, job_id: str) -> Record | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return dict(record) if record is not None else None

    def find(self, key: str) -> Record | None:
        with self._lock:
            job_id = self._keys.get(key)
        return self.get(job_id) if job_id is not None else None

    def update(self, job_id: str, /, **fields: Any) -> bool:
        with self._lock:
            record = self._jobs.setdefault(job_id, {"job_id": job_id})
            if "status" in fields and record.get("status") in FINAL:
                return False
            record.update(fields)
            if fields.get("status") in FINAL:
                self._ended.append((time.monotonic(), job_id))
            return True

    def link(self, key: str, job_id: str, replace: bool = False) -> None:
        with self._lock:
            if replace or key not in self._keys:
                self._keys[key] = job_id

    def release(self, job_id: str, *keys: str) -> None:
        with self._lock:
            for key in keys:
                if self._keys.get(key) == job_id:
                    del self._keys[key]
            self._jobs.pop(job_id, None)

    def backlog(self) -> int:
        with self._lock:
            return sum(1 for r in self._jobs.values() if r.get("status") in ACTIVE)

    def count_start(self, task_id: str, attempt: int) -> int:
        with self._lock:
            key = f"{task_id}:{attempt}"
            self._starts[key] = self._starts.get(key, 0) + 1
            return self._starts[key]


ADVANCE_SCRIPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == '"done"' or status == '"failed"' then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call(ARGV[3], KEYS[2], ARGV[2])
return 1
"""
"""Set a job's fields (status included) unless it has ended; add it to or remove it from the
backlog set. KEYS: the record, the backlog set; ARGV: ttl, job id, sadd|srem, field, value..."""


class RedisJobStore(JobStore):
    """Records as Redis hashes (``<prefix>:job:<job_id>``), claims as keys set only when absent
    (``<prefix>:key:<key>``), the backlog as a set of job ids; all expire after ``ttl_s``."""

    def __init__(self, url: str, prefix: str, ttl_s: int, patience_s: float = 0.0) -> None:
        """``patience_s``: how long a command waits for a Redis that is down or restarting
        (reconnecting with jittered backoff up to 5 s) before it raises; 0: a few tries."""
        retries = 3 + int(patience_s / REDIS_RETRY_MAX_WAIT_S)
        self.redis = redis.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=5,
            retry=Retry(ExponentialWithJitterBackoff(cap=REDIS_RETRY_MAX_WAIT_S, base=0.25),
                        retries),
        )  # fmt: skip
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._advance = self.redis.register_script(ADVANCE_SCRIPT)  # sent on first use

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}:key:{key}"

    @property
    def _active(self) -> str:
        return f"{self.prefix}:active"

    def _write(self, pipe: Any, job_id: str, fields: dict[str, Any]) -> None:
        pipe.hset(self._job(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})
        pipe.expire(self._job(job_id), self.ttl_s)

    def claim(self, key: str, record: Record) -> tuple[Record, bool]:
        job_id = record["job_id"]
        for _ in range(3):
            if self.redis.set(self._key(key), job_id, nx=True, ex=self.ttl_s):
                with self.redis.pipeline() as pipe:
                    self._write(pipe, job_id, record)
                    pipe.sadd(self._active, job_id)
                    pipe.execute()
                return dict(record), True
            existing = self.find(key)
            if existing is not None:
                return existing, False
            time.sleep(0.05)  # the claimed job is being written (or expired): look again
        raise RuntimeError(f"cannot claim {key!r} in the job store")

    def get(self, job_id: str) -> Record | None:
        raw = self.redis.hgetall(self._job(job_id))
        if not raw:
            return None
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def find(self, key: str) -> Record | None:
        job_id = self.redis.get(self._key(key))
        return self.get(job_id.decode()) if job_id is not None else None

    def update(self, job_id: str, /, **fields: Any) -> bool:
        values = {"job_id": job_id, **fields}
        if "status" not in fields:
            with self.redis.pipeline() as pipe:
                self._write(pipe, job_id, values)
                pipe.execute()
            return True
        # One atomic step: refuse if the job has ended, else write and move it in the backlog.
        flat = [part for k, v in values.items() for part in (k, json.dumps(v))]
        move = "srem" if fields["status"] in FINAL else "sadd"
        return bool(self._advance(keys=[self._job(job_id), self._active],
                                  args=[self.ttl_s, job_id, move, *flat]))  # fmt: skip

    def link(self, key: str, job_id: str, replace: bool = False) -> None:
        self.redis.set(self._key(key), job_id, nx=not replace, ex=self.ttl_s)

    def release(self, job_id: str, *keys: str) -> None:
        with self.redis.pipeline() as pipe:
            for key in keys:
                current = self.redis.get(self._key(key))
                if current is not None and current.decode() == job_id:
                    pipe.delete(self._key(key))
            pipe.delete(self._job(job_id))
            pipe.srem(self._active, job_id)
            pipe.execute()

    def backlog(self) -> int:
        return int(self.redis.scard(self._active))

    def count_start(self, task_id: str, attempt: int) -> int:
        key = f"{self.prefix}:starts:{task_id}:{attempt}"
        with self.redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, self.ttl_s)
            count, _ = pipe.execute()
        return int(count)

    def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(self.redis.ping())


def open_jobs(settings: Settings, patience_s: float = 0.0) -> JobStore:
    """Memory in embedded mode; else Redis at the result backend's URL (records prefixed by the
    queue prefix, so that two deployments on one Redis stay apart), whose commands wait up to
    ``patience_s`` for a Redis that restarts (a worker's steps wait; a client asks again)."""
    if settings.embedded:
        return MemoryJobStore(settings.gateway.jobs_ttl_s)
    url = settings.broker.result_backend.get_secret_value()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"job records need a Redis result backend, not {url.split(':', 1)[0]}")
    return RedisJobStore(url, f"riveg-jobs:{settings.broker.queue_prefix}",
                         settings.gateway.jobs_ttl_s, patience_s)  # fmt: skip
