"""Job records (memory and Redis): one job per claimed key, status updates, the backlog; and
the intake's message schemas."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from riveg.gateway.amqp import SCHEMAS, job_schema, post_schema, schema_errors
from riveg.orchestration.jobs import JobStore, MemoryJobStore, RedisJobStore, new_record
from riveg.orchestration.launcher import port_open
from tests.support.processes import delete_job_records

REDIS = "redis://127.0.0.1:6379/12"  # a db of this module's own


@pytest.fixture(params=["memory", "redis"])
def jobs(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    if request.param == "memory":
        yield MemoryJobStore()
        return
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis (127.0.0.1:6379) must run: .ci/run starts it")
    prefix = f"riveg-test-{uuid.uuid4().hex[:8]}"
    yield RedisJobStore(REDIS, f"riveg-jobs:{prefix}", ttl_s=600)
    delete_job_records(REDIS, prefix)


def test_a_key_is_claimed_once_even_concurrently(jobs: JobStore) -> None:
    winners: list[str] = []

    def claim(n: int) -> None:
        record, created = jobs.claim("post-1", new_record(f"job-{n}", "post-1"))
        if created:
            winners.append(record["job_id"])

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert jobs.find("post-1")["job_id"] == winners[0]
    assert jobs.backlog() == 1


def test_status_updates_and_the_backlog(jobs: JobStore) -> None:
    jobs.claim("a", new_record("job-a", "a", callback_url="http://x/y"))
    jobs.claim("b", new_record("job-b", "b"))
    assert jobs.backlog() == 2
    jobs.update("job-a", status="running", step="mner")
    assert (jobs.get("job-a")["status"], jobs.get("job-a")["step"]) == ("running", "mner")
    assert jobs.get("job-a")["callback_url"] == "http://x/y"
    jobs.update("job-a", status="done", step=None, result_key="results/posts/a.json")
    assert jobs.backlog() == 1 and jobs.get("job-a")["result_key"] == "results/posts/a.json"
    jobs.link("b-alias", "job-b")
    jobs.link("b-alias", "job-a")  # taken: unchanged
    assert jobs.find("b-alias")["job_id"] == "job-b"
    jobs.link("b-alias", "job-a", replace=True)
    assert jobs.find("b-alias")["job_id"] == "job-a"
    jobs.release("job-b", "b")
    assert jobs.find("b") is None and jobs.get("job-b") is None and jobs.backlog() == 0
    # An ended job stays ended: a redelivered step cannot revive it, a second end is refused.
    assert jobs.update("job-a", status="running", step="ve") is False
    assert jobs.update("job-a", status="failed", error="late") is False
    assert jobs.get("job-a")["status"] == "done" and jobs.backlog() == 0
    assert jobs.update("job-a", result_key="results/posts/a2.json") is True  # not a status
    assert jobs.get("job-unknown") is None


def test_message_schema_files_are_current() -> None:
    """The files producers and consumers read are what the code validates with."""
    assert json.loads((SCHEMAS / "post.schema.json").read_text()) == post_schema()
    assert json.loads((SCHEMAS / "job.schema.json").read_text()) == job_schema()


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"id": "a", "text": "b", "image_key": "images/x"}, None),
        ({"id": "a", "text": "b"}, "give exactly one of image_b64, image_url, image_key"),
        ({"id": 5, "text": "b", "image_key": "k"}, "id: 5 is not of type 'string'"),
        ({"id": "a", "text": "b", "image_key": "k", "x": 1}, "Additional properties"),
        (["a"], "is not of type 'object'"),
    ],
)
def test_intake_messages_are_checked_against_the_schema(document: object, reason: str) -> None:
    found = schema_errors(document)
    assert (found is None) if reason is None else (reason in (found or "")), found


def test_memory_records_of_ended_jobs_expire() -> None:
    jobs = MemoryJobStore(ttl_s=0.05)
    jobs.claim("old", new_record("job-old", "old"))
    jobs.update("job-old", status="done")
    jobs.claim("running", new_record("job-running", "running"))
    time.sleep(0.1)
    jobs.claim("new", new_record("job-new", "new"))  # a claim forgets what expired
    assert jobs.get("job-old") is None and jobs.find("old") is None
    assert jobs.get("job-running") is not None  # not ended: kept
