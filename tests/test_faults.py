"""The fault suite: a distributed deployment on its own RabbitMQ node, Redis and S3 server rides
out each fault while `riveg batch` runs, and every post ends exactly once (done, or failed with
its reason for the poison post) with one result in the store and one line in the output.

Run alone with ``pytest -m faults``; ``benchmarks/soak.py`` runs the same faults over 1,000
posts. Each test prints its figures (posts done/failed/duplicated, time to recover, steps done
twice)."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from kombu import Connection

from riveg.gateway.client import GatewayClient
from tests.conftest import SAMPLE_IMAGE
from tests.support.faults import (
    PREFIX,
    TEXTS,
    Deployment,
    FaultRun,
    count_lines,
    deployment,
    kill_on_start,
    output_of,
    run_with_fault,
    start_batch,
    step_in_flight,
    write_posts,
)
from tests.support.private import missing_servers
from tests.support.processes import spawn_gateway

pytestmark = [pytest.mark.faults, pytest.mark.integration]
POSTS = 12
AFTER = 3  # results out before the fault


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    missing = missing_servers()
    if missing:
        pytest.skip(f"the fault suite starts its own servers; this machine lacks {missing}")
    with deployment(tmp_path_factory.mktemp("faults")) as running:
        yield running


def _run(deploy: Deployment, name: str, fault, tmp_path: Path, **kwargs) -> FaultRun:
    count, big_first = kwargs.pop("posts", POSTS), kwargs.pop("big_first", False)
    posts = write_posts(tmp_path, name, count, SAMPLE_IMAGE, big_first,
                        long_at=kwargs.pop("long_at", None))  # fmt: skip
    window = kwargs.pop("window", 6)
    run = run_with_fault(deploy, name, posts, fault, after=AFTER, window=window, timeout=300,
                         **kwargs)  # fmt: skip
    _report(name, run.figures())
    return run


def _report(name: str, figures: dict) -> None:
    """Print a fault's figures; with RIVEG_FAULTS_REPORT=FILE also add them to that JSON file."""
    print(json.dumps({name: figures}))
    path = os.environ.get("RIVEG_FAULTS_REPORT")
    if path:
        report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        report[name] = {**report.get(name, {}), **figures}
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def _all_workers_answer(deploy: Deployment, timeout: float = 120.0) -> float:
    """Seconds until every worker of the deployment answers `celery inspect ping`."""
    workers = sum(name.startswith("worker-") for name in deploy.ready["processes"])
    app = Celery(broker=deploy.rabbit.url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            if len(app.control.ping(timeout=1.0)) >= workers:
                return round(time.monotonic() - started, 1)
    finally:
        app.close()
    raise AssertionError(f"not every worker answered a ping within {timeout} s")


def _assert_each_post_once(run: FaultRun, failed: set[str] = frozenset()) -> None:
    """Every post has exactly one output line and one stored result (or fails, if listed)."""
    ids = [str(line["id"]) for line in run.lines]
    expected = {f"{run.name}-{i:04d}" for i in range(run.posts)}
    assert sorted(ids) == sorted(expected), f"output lines: {ids}\n{run.stderr_tail}"
    errors = {str(line["id"]): line["error"] for line in run.lines if "error" in line}
    assert set(errors) == set(failed), f"{errors}\n{run.stderr_tail}"
    assert len(run.stored) == len(set(run.stored)) == run.posts - len(failed), run.stored
    assert run.duplicated == 0
    for line in run.lines:
        if "error" not in line:
            assert line["entities"], line  # a real result, not an empty one
    assert run.exit_code == (1 if failed else 0), run.stderr_tail


def test_worker_sigkill(deploy: Deployment, tmp_path: Path) -> None:
    """The LLM worker dies mid-batch: `riveg up` restarts it, its unacknowledged tasks come
    back, and every post ends once."""
    run = _run(deploy, "worker-kill", lambda d: d.kill("worker-llm"), tmp_path)
    _assert_each_post_once(run)


def test_stage_server_sigkill_and_restart(deploy: Deployment, tmp_path: Path) -> None:
    """The LLM server dies (and takes seconds to load again): the steps retry until it answers."""
    run = _run(deploy, "server-kill", lambda d: d.kill("serve-llm"), tmp_path)
    _assert_each_post_once(run)


def test_broker_restart(deploy: Deployment, tmp_path: Path) -> None:
    """RabbitMQ stops for 5 s and starts again: workers and the client reconnect; messages are
    durable; a step finished but not acknowledged is not done again."""
    answered_after: list[float] = []

    def fault(d: Deployment) -> None:
        # With a step running across the restart (the long post's expansion): its
        # acknowledgement after the reconnection froze the thread-pool worker for good.
        step_in_flight(d, "worker-llm", "expand")
        d.rabbit.restart(down_s=5)
        answered_after.append(_all_workers_answer(d))

    run = _run(deploy, "broker-restart", fault, tmp_path, long_at=AFTER + 1)
    _assert_each_post_once(run)
    # Every worker consumes again within seconds of the broker's return (it took up to 30 s
    # with kombu's default reconnection waits), and still answers once the batch is over.
    _report("broker-restart", {"workers_answer_ping_after_s": answered_after[0]})
    assert answered_after[0] < 10
    # A worker frozen by the restart held its posts for about 170 s (the batch took 206 s
    # instead of about 40 s) until the broker's heartbeat timeout cut its connection.
    assert run.wall_s < 120, run.figures()


def test_redis_restart(deploy: Deployment, tmp_path: Path) -> None:
    """Redis (result backend and job records) stops for 5 s: workers wait for it, the client
    keeps waiting (and takes results from the store)."""
    run = _run(deploy, "redis-restart", lambda d: d.redis.restart(down_s=5), tmp_path)
    _assert_each_post_once(run)


def test_s3_restart(deploy: Deployment, tmp_path: Path) -> None:
    """The object store is killed and back after 5 s: store errors are retried, not failures."""

    def fault(d: Deployment) -> None:
        d.s3.kill()
        time.sleep(5)
        d.s3.start()

    run = _run(deploy, "s3-restart", fault, tmp_path)
    _assert_each_post_once(run)


def test_gateway_answers_503_while_redis_is_down(deploy: Deployment, tmp_path: Path) -> None:
    """The gateway rides out a Redis restart: 503 with Retry-After (not a 500, not a crash)
    while its job records are unreachable, and the post accepted before ends done after."""
    process, url, _ = spawn_gateway(deploy.env, tmp_path / "gateway.log")
    image = base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode()
    try:
        post = {"id": "gateway-redis-0", "text": TEXTS[0], "image_b64": image}
        accepted = httpx.post(f"{url}/v1/posts", json=post, timeout=30)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        deploy.redis.stop()
        try:
            for response in (
                httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30),
                httpx.post(f"{url}/v1/posts", timeout=30,
                           json={"id": "gateway-redis-1", "text": TEXTS[1], "image_b64": image}),
            ):  # fmt: skip
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                assert "Redis" in response.json()["error"]
        finally:
            deploy.redis.start()
        assert process.poll() is None
        with GatewayClient(url) as client:  # waits through the 503s of a Redis coming back
            assert client.wait(job_id, timeout=300)["status"] == "done"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_batch_client_killed_and_run_again(deploy: Deployment, tmp_path: Path) -> None:
    """`riveg batch` is killed with posts in flight and run again: it takes finished posts from
    the store, waits for the jobs still running instead of submitting them again, and every
    post has one result."""
    posts = write_posts(tmp_path, "client-kill", POSTS, SAMPLE_IMAGE)
    first = start_batch(deploy, posts, window=6)
    deadline = time.monotonic() + 600
    while count_lines(output_of(posts)) < AFTER and time.monotonic() < deadline:
        time.sleep(0.2)
    first.kill()
    first.communicate()
    run = run_with_fault(deploy, "client-kill", posts, None, window=6)
    _report("client-kill", {**run.figures(), "summary": run.summary})
    _assert_each_post_once(run)
    assert run.summary["reattached"] + run.summary["from_store"] >= 1, run.summary
    assert run.summary["skipped"] >= AFTER


def test_poison_post_is_dead_lettered(deploy: Deployment, tmp_path: Path) -> None:
    """A post that kills its worker each time it starts ends failed after
    RIVEG_PIPELINE_MAX_STARTS starts, kept on <prefix>.dead; the others finish. One post in
    flight at a time: a step sharing the worker with the poison dies with it too, and each such
    death counts against that post as well (a race the test would otherwise lose at times)."""
    poison = "poison-0000"
    stop = kill_on_start(deploy, poison, times=3)
    try:
        run = _run(deploy, "poison", None, tmp_path, posts=4, big_first=True, window=1)
    finally:
        kills = stop()
    assert kills == 3
    _assert_each_post_once(run, failed={poison})
    assert "poison post" in run.lines[[str(x["id"]) for x in run.lines].index(poison)]["error"]
    with Connection(deploy.rabbit.url) as connection:
        message = connection.SimpleQueue(f"{PREFIX}.dead").get(timeout=10)
        state, reason = message.payload, message.headers["x-riveg-error"]
        message.ack()
    assert state["id"] == poison and "poison post" in reason
