"""Distributed mode on one machine: `riveg up` (5 stage servers, 6 Celery workers, nanio S3)
against the real RabbitMQ and Redis; results must equal the embedded mode's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from riveg.core.stages import STAGES
from riveg.orchestration.launcher import port_open
from riveg.orchestration.pipeline import submit_post
from tests.conftest import SAMPLE_IMAGE
from tests.support.processes import (
    delete_job_records,
    delete_queues,
    free_port,
    spawn_up,
    stop_up,
)

pytestmark = pytest.mark.integration

BROKER = os.environ.get("RIVEG_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("RIVEG_TEST_REDIS", "redis://127.0.0.1:6379/8")  # this module's db
POSTS = [
    ("d1", "Astronaut Eileen Collins poses at NASA 's Johnson Space Center in Houston ."),
    ("d2", "Eileen Collins and Barack Obama talk about the shuttle Discovery ."),
    ("d3", "Great photo from the Kennedy Space Center in Florida today !"),
    ("d4", "No names here , just a nice picture"),
]


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "timings_ms"}


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory):
    """`riveg up` with its own queues, ports and bucket; yields the environment to reach it."""
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
    riveg = str(Path(sys.executable).parent / "riveg")
    done = subprocess.run(
        [riveg, "batch", str(posts), "--images", str(images), "--out", str(out),
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
