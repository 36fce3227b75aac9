"""The embedded pipeline: the chain's result, bad input, and the analyze/batch commands."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from riveg.core.errors import InvalidInput
from riveg.core.images import rle_to_mask
from riveg.orchestration.jobs import MemoryJobStore, result_key
from riveg.orchestration.pipeline import STEPS, submit_post
from riveg.orchestration.runtime import Runtime, set_runtime
from riveg.orchestration.tasks import PostError
from tests.conftest import SAMPLE_IMAGE, SAMPLE_TEXT

ENTITY_KEYS = {"text", "start", "end", "type", "expansion", "groundable", "ve_score", "box", "mask"}


@pytest.fixture(scope="module")
def sample_result(cluster, sample_bytes) -> dict:
    return submit_post(cluster, SAMPLE_TEXT, sample_bytes, "astronaut").get()


def test_result_has_the_documented_shape(sample_result) -> None:
    result = sample_result
    assert set(result) == {"job_id", "id", "submitted_at", "finished_at", "text", "entities",
                           "models", "timings_ms"}  # fmt: skip
    assert result["id"] == "astronaut" and result["text"] == SAMPLE_TEXT
    assert re.fullmatch(r"[0-9a-f]{32}", result["job_id"])
    assert result["submitted_at"] < result["finished_at"]  # ISO 8601 UTC times sort as text
    assert set(result["models"]) == {"llm", "mner", "ve", "vg", "seg"}
    assert all("@" in model for model in result["models"].values())
    assert set(result["timings_ms"]) == set(STEPS) - {"knowledge"}
    assert result["entities"], "the sample post names entities"
    for entity in result["entities"]:
        assert set(entity) == ENTITY_KEYS
        assert SAMPLE_TEXT[entity["start"] : entity["end"]] == entity["text"]
        assert entity["expansion"].startswith(f"{entity['text']}({entity['type']})")


def test_the_person_is_grounded_and_segmented(sample_result) -> None:
    people = [e for e in sample_result["entities"] if e["type"] == "PER"]
    assert people and all(p["groundable"] and p["box"] and p["mask"] for p in people)
    mask = rle_to_mask(people[0]["mask"])
    assert mask.shape == (512, 512) and mask[120, 225] == 1  # the face is in the mask
    others = [e for e in sample_result["entities"] if e["type"] != "PER"]
    assert others and all(not e["groundable"] and e["box"] is None for e in others)


def test_the_result_is_kept_in_the_object_store(cluster, sample_bytes) -> None:
    submission = submit_post(cluster, "Eileen Collins at NASA", sample_bytes, "kept")
    result = submission.get()
    assert result["job_id"] == submission.job_id
    assert cluster.store.get_json("results/posts/kept.json") == result
    record = cluster.jobs.get(submission.job_id)
    assert record["status"] == "done" and record["result_key"] == "results/posts/kept.json"
    assert cluster.jobs.backlog() == 0
    # The image is kept once per content, with its content type.
    digest = hashlib.sha256(sample_bytes).hexdigest()
    assert cluster.store.get_bytes(f"images/sha256/{digest}") == sample_bytes


def test_result_keys_derive_from_any_post_id() -> None:
    assert result_key("kept") == "results/posts/kept.json"
    assert result_key("tweet@17_06_1") == "results/posts/tweet@17_06_1.json"
    odd = ["a/../b c", "tweet 1", "2024/05/1", "café-1", "..", ".hidden", "x" * 300, "%41"]
    keys = [result_key(post_id) for post_id in odd]
    assert len(set(keys)) == len(odd)  # every id its own key
    for key in keys:
        name = key.removeprefix("results/posts/")
        assert re.fullmatch(r"[A-Za-z0-9_@-][A-Za-z0-9._@~-]*\.json", name) and len(name) < 120, key
    assert result_key("a/../b c").startswith("results/posts/a_.._b_c~")


def test_knowledge_step_runs_when_asked(cluster, sample_bytes) -> None:
    result = submit_post(cluster, "Eileen Collins at NASA", sample_bytes, "k", knowledge=True).get()
    assert "knowledge" in result["timings_ms"]


def test_bad_posts_fail_clearly_and_the_next_post_still_works(cluster, sample_bytes) -> None:
    with pytest.raises(PostError, match="not an image"):
        submit_post(cluster, "Obama in Paris", b"GIF89a but not really", "junk").get()
    with pytest.raises(InvalidInput, match="empty"):
        submit_post(cluster, "   ", sample_bytes, "empty")
    assert submit_post(cluster, "Eileen Collins at NASA", sample_bytes, "fine").get()["entities"]


def test_a_post_without_entities_completes(cluster, sample_bytes) -> None:
    result = submit_post(cluster, "what a lovely day it is", sample_bytes, "none").get()
    assert result["entities"] == []


def _write_batch(folder: Path) -> Path:
    (folder / "images").mkdir()
    (folder / "images" / "a.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    (folder / "images" / "junk.jpg").write_bytes(b"not an image at all")
    lines = [
        json.dumps({"id": "p1", "text": "Eileen Collins at NASA", "image": "a.jpg"}),
        "{this is not json",
        json.dumps({"id": "p2", "text": "Obama in Paris", "image": "junk.jpg"}),
        json.dumps({"id": "p3", "text": "Houston , Texas", "image": "missing.jpg"}),
        json.dumps({"id": "p4", "text": "Discovery launches from Florida", "image": "a.jpg"}),
    ]
    posts = folder / "posts.jsonl"
    posts.write_text("\n".join(lines) + "\n")
    return posts


def test_batch_records_failures_and_resumes(cluster, tmp_path, monkeypatch) -> None:
    from riveg.orchestration import commands

    @contextmanager
    def reuse(settings):
        yield cluster

    monkeypatch.setattr(commands, "pipeline_runtime", reuse)
    posts = _write_batch(tmp_path)
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    first = runner.invoke(commands.batch, [str(posts), "--images", str(tmp_path / "images"),
                                           "--out", str(out), "--json"])  # fmt: skip
    assert first.exit_code == 1, first.output  # some posts failed
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["skipped"]) == (2, 3, 0)
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"p1", "line-2", "p2", "p3", "p4"}
    assert "not an image" in records["p2"]["error"]
    assert "missing.jpg" in records["p3"]["error"]
    assert "not JSON" in records["line-2"]["error"]
    assert records["p1"]["entities"] and records["p4"]["id"] == "p4"
    # Fix one post and run again: finished posts are skipped, failures are tried again.
    (tmp_path / "images" / "missing.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    second = runner.invoke(commands.batch, [str(posts), "--images", str(tmp_path / "images"),
                                            "--out", str(out), "--json"])  # fmt: skip
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["skipped"]) == (1, 2, 2)
    final = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in final) == ["line-2", "p1", "p2", "p3", "p4"]
    assert "error" not in next(r for r in final if r["id"] == "p3")


@pytest.mark.slow
def test_analyze_command_end_to_end(tmp_path) -> None:
    """`riveg analyze` as a user runs it: JSON on stdout, logs on stderr, overlay written."""
    riveg = str(Path(sys.executable).parent / "riveg")
    env_store = {"RIVEG_STORE_PATH": str(tmp_path / "store")}
    done = subprocess.run(
        [riveg, "analyze", "--text", SAMPLE_TEXT, "--image", str(SAMPLE_IMAGE), "--id", "cli",
         "--out", str(tmp_path / "out"), "--json"],
        capture_output=True, text=True, timeout=600, env={**_env(), **env_store},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["id"] == "cli" and result["entities"]
    assert (tmp_path / "out" / "cli.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "cli.json").read_text()) == result
    assert "analyzed" in done.stderr

    bad = subprocess.run(
        [riveg, "analyze", "--text", "hi", "--image", str(tmp_path / "out" / "cli.json")],
        capture_output=True, text=True, timeout=600, env={**_env(), **env_store},
    )  # fmt: skip
    assert bad.returncode != 0 and "not an image" in bad.stderr and bad.stdout == ""


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}


def test_image_id_reaches_the_describe_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A post submitted with a benchmark image id asks Describe for that id's caption."""
    from types import SimpleNamespace

    from riveg.core.config import LimitsSettings
    from riveg.orchestration import pipeline, tasks
    from riveg.v1 import llm_pb2

    calls: list[tuple[str, object]] = []

    class FakeLlm:
        def call(self, method: str, request: object, job_id: str) -> object:
            calls.append((method, request))
            if method == "Describe":
                return llm_pb2.DescribeResponse(description="a caption", source="captions")
            return llm_pb2.KnowledgeResponse(knowledge="some knowledge", model="fake@1")

    runtime = SimpleNamespace(client=lambda stage: FakeLlm())
    state: dict = {}
    monkeypatch.setattr(pipeline, "build_chain", lambda s, knowledge: state.update(s) or _Done())
    store = SimpleNamespace(put_bytes=lambda key, data, content_type: key, exists=lambda key: False)
    settings = SimpleNamespace(
        pipeline=SimpleNamespace(knowledge=True), limits=LimitsSettings(), embedded=True
    )
    jobs = MemoryJobStore()
    pipeline.submit_post(SimpleNamespace(store=store, settings=settings, jobs=jobs), "Obama",
                         b"x", "p", image_id="16_05_01_6")  # fmt: skip
    assert state["image_id"] == "16_05_01_6"
    inspect.unwrap(tasks.knowledge.run)(state, runtime)  # the step function itself
    describe = calls[0][1]
    assert calls[0][0] == "Describe" and describe.image_id == "16_05_01_6"
    assert calls[1][1].image_description == "a caption"
    assert state["knowledge"] == "some knowledge"


class _Done:
    def apply(self) -> dict:
        return {}


def test_more_entities_than_one_call_takes_go_in_several_calls(cluster, sample_bytes) -> None:
    """With at most 2 entities per stage call, a post with more entities gets the same result
    as in one call each (the stage servers refuse calls above their limit)."""
    text = "Eileen Collins , Barack Obama and NASA met in Houston and Paris ."
    whole = submit_post(cluster, text, sample_bytes, "whole").get()
    assert len(whole["entities"]) > 2
    settings = cluster.settings.model_copy(deep=True)
    settings.limits.max_entities = 2
    small = Runtime(settings, cluster.store, cluster.addrs)
    labels = {"stage": "llm", "method": "Expand", "code": "OK"}
    calls_before = REGISTRY.get_sample_value("riveg_stage_requests_total", labels) or 0
    set_runtime(small)
    try:
        split = submit_post(small, text, sample_bytes, "split").get()
    finally:
        set_runtime(cluster)
        small.close()
    calls = REGISTRY.get_sample_value("riveg_stage_requests_total", labels) - calls_before
    assert calls == (len(whole["entities"]) + 1) // 2
    assert [e["expansion"] for e in split["entities"]] == [
        e["expansion"] for e in whole["entities"]
    ]
    keys = ("text", "type", "groundable", "box")
    assert [[e[k] for k in keys] for e in split["entities"]] == [
        [e[k] for k in keys] for e in whole["entities"]
    ]


def test_batch_processes_a_repeated_id_once_and_reports_the_repeat(
    cluster, tmp_path, monkeypatch
) -> None:
    from riveg.orchestration import commands

    @contextmanager
    def reuse(settings):
        yield cluster

    monkeypatch.setattr(commands, "pipeline_runtime", reuse)
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(SAMPLE_IMAGE.read_bytes())
    post = {"id": "dup", "text": "NASA in Houston", "image": "a.jpg"}
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps(p) + "\n" for p in (post, post, post)))
    out = tmp_path / "out.jsonl"
    done = CliRunner().invoke(commands.batch, [str(posts), "--images", str(images),
                                               "--out", str(out), "--json"])  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (1, 2)
    # Lines come in the order posts end (posts run at once): the errors before the post.
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(records) == ["dup", "line-2", "line-3"]
    assert records["line-2"]["error"] == (
        "line 2: the id 'dup' is on line 1 already; not processed twice"
    )
