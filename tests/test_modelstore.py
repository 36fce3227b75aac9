"""Model store (local folder, object store, S3) and hot-swapping a stage's model under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from riveg.core.config import load_settings
from riveg.core.storage import LocalObjectStore, open_store
from riveg.serving.client import StageClient
from riveg.serving.manager import ModelManager
from riveg.serving.messages import entity_to_proto, image_ref
from riveg.serving.modelstore import ModelRef, ModelStore, open_model_store, parse_model_ref
from riveg.serving.server import StageServer
from riveg.v1 import common_pb2, vg_pb2, vg_pb2_grpc
from tests.conftest import SAMPLE_TEXT

pytest.importorskip("transformers", reason="the tiny OWLv2 test models need transformers")


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny import save_tiny_owl

    return save_tiny_owl(tmp_path_factory.mktemp("owl"))


def test_model_refs_are_name_at_version() -> None:
    assert parse_model_ref("owlv2@2") == ModelRef("owlv2", "2")
    for bad in ("owlv2", "@2", "a@b@c", "x y@1"):
        with pytest.raises(ValueError, match="name@version"):
            parse_model_ref(bad)


def test_publish_list_and_fetch_in_the_object_store(tmp_path: Path, tiny_owl: Path) -> None:
    models = ModelStore(LocalObjectStore(tmp_path / "store"), tmp_path / "cache")
    key = models.publish("vg", ModelRef("owlv2", "2"), tiny_owl, backend="owl")
    assert key == "models/vg/owlv2/2"
    listed = models.list("vg")
    assert [(str(m.ref), m.backend) for m in listed] == [("owlv2@2", "owl")]
    assert models.list("ve") == [] and models.manifest("vg", ModelRef("owlv2", "3")) is None
    folder = models.fetch("vg", ModelRef("owlv2", "2"))
    assert (folder / "config.json").read_bytes() == (tiny_owl / "config.json").read_bytes()
    with pytest.raises(FileNotFoundError, match="no model vg/owlv2@9"):
        models.fetch("vg", ModelRef("owlv2", "9"))


def test_s3_versions_are_downloaded_once_into_the_cache(s3_server, tmp_path, tiny_owl) -> None:
    settings = load_settings(
        store_kind="s3",
        s3_endpoint=s3_server["RIVEG_S3_ENDPOINT"],
        s3_access_key=s3_server["RIVEG_S3_ACCESS_KEY"],
        s3_secret_key=s3_server["RIVEG_S3_SECRET_KEY"],
        s3_bucket="riveg-models",
        models_cache_dir=tmp_path / "cache",
    )
    models = open_model_store(settings, open_store(settings))
    models.publish("vg", ModelRef("owlv2", "1"), tiny_owl, backend="owl")
    assert [str(m.ref) for m in models.list("vg")] == ["owlv2@1"]
    folder = models.fetch("vg", ModelRef("owlv2", "1"))
    assert folder.is_relative_to(tmp_path / "cache") and (folder / "model.safetensors").is_file()
    assert models.fetch("vg", ModelRef("owlv2", "1")) == folder


def test_configured_model_and_clear_errors(tmp_path: Path, tiny_owl: Path) -> None:
    from services.vg.backends import VG_BACKENDS

    root = tmp_path / "models"
    ModelStore(LocalObjectStore(root), tmp_path / "cache", prefix="").publish(
        "vg", ModelRef("owlv2", "1"), tiny_owl, backend="owl"
    )
    settings = load_settings(models_store_path=root, vg_model="owlv2@1")
    manager = ModelManager.from_settings("vg", VG_BACKENDS, settings)
    assert manager.current.model == "owlv2@1" and manager.backend_name == "owl"
    builtin = ModelManager.from_settings("vg", VG_BACKENDS, load_settings(vg_model="person@1"))
    assert builtin.current.model == "person@1" and builtin.current.model_dir is None
    unset = ModelManager.from_settings("vg", VG_BACKENDS, load_settings(models_store_path=root))
    assert unset.current.model == "mediapipe-person-vg@0.10.21"  # as before the model store
    with pytest.raises(ValueError, match="neither in the model store"):
        ModelManager.from_settings("vg", VG_BACKENDS, load_settings(vg_model="nothing@1"))


def test_hot_swap_under_streaming_calls_fails_no_call(tmp_path: Path, tiny_owl, sample_bytes):
    """Eight client threads call Ground without pause while the admin RPC swaps owlv2@1 ->
    owlv2@2: no call fails, every response names one whole model, and after the swap only the
    new version answers. Then rollback and List."""
    from riveg.serving.stages import build_stage

    root = tmp_path / "models"
    models = ModelStore(LocalObjectStore(root), tmp_path / "cache", prefix="")
    for version in ("1", "2"):
        models.publish("vg", ModelRef("owlv2", version), tiny_owl, backend="owl")
    settings = load_settings(
        store_kind="local",
        store_path=tmp_path / "store",
        models_store_path=root,
        vg_model="owlv2@1",
    )
    store = open_store(settings)
    key = store.put_bytes("images/swap", sample_bytes)
    server = StageServer(build_stage("vg", settings, store), settings)
    port = server.start(port=0, host="127.0.0.1")
    client = StageClient("vg", f"127.0.0.1:{port}", vg_pb2_grpc.VgServiceStub, settings)
    start = SAMPLE_TEXT.index("Eileen Collins")
    entities = [
        entity_to_proto({"text": "Eileen Collins", "start": start, "end": start + 14,
                         "type": "PER"}),
        entity_to_proto({"text": "NASA", "start": 0, "end": 4, "type": "ORG"}),
    ]  # fmt: skip
    request = vg_pb2.GroundRequest(image=image_ref(key, 512, 512), entities=entities)
    stop = threading.Event()
    seen: list[tuple[float, float, str]] = []  # (call start, call end, answering model)
    failures: list[str] = []

    def stream() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply = client.call("Ground", request, timeout=30)
                assert len(reply.results) == 2
                seen.append((started, time.monotonic(), reply.model))
            except Exception as exc:  # counted, not raised: the assertion below reports them
                failures.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        load_started = time.monotonic()
        swapped = client.admin.Load(common_pb2.LoadModelRequest(model="owlv2@2"), timeout=60)
        swapped_at = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        assert swapped.model == "owlv2@2" and swapped.previous == "owlv2@1"
        before = [m for _, end, m in seen if end < load_started]
        after = [m for start, _, m in seen if start > swapped_at]
        assert before and set(before) == {"owlv2@1"}
        assert after and set(after) == {"owlv2@2"}
        current = client.admin.Current(common_pb2.CurrentModelRequest(), timeout=5)
        assert (current.model, current.previous, current.ready) == ("owlv2@2", "owlv2@1", True)
        listed = client.admin.List(common_pb2.ListModelsRequest(), timeout=5)
        rows = {m.model: (m.current, m.previous, m.backend) for m in listed.models}
        assert rows == {"owlv2@1": (False, True, "owl"), "owlv2@2": (True, False, "owl")}
        back = client.admin.Rollback(common_pb2.RollbackRequest(), timeout=5)
        assert (back.model, back.previous) == ("owlv2@1", "owlv2@2")
        assert client.call("Ground", request).model == "owlv2@1"
        with pytest.raises(grpc.RpcError) as missing:
            client.admin.Load(common_pb2.LoadModelRequest(model="owlv2@7"), timeout=5)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "owlv2@7" in missing.value.details()
        assert client.call("Ground", request).model == "owlv2@1"  # a failed load changes nothing
    finally:
        stop.set()
        client.close()
        server.stop(grace=1.0)


def test_publish_and_list_from_the_command_line(tmp_path: Path, tiny_owl: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "RIVEG_MODELS_STORE_PATH": str(tmp_path / "models")}
    command = [sys.executable, "-m", "riveg.cli", "models"]
    done = subprocess.run(
        [*command, "publish", "vg", "owlv2@3", str(tiny_owl), "--backend", "owl", "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["key"] == "vg/owlv2/3"
    listed = subprocess.run(
        [*command, "list", "vg", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert json.loads(listed.stdout.splitlines()[-1])["models"] == [
        {"model": "owlv2@3", "backend": "owl"}
    ]
    bad = subprocess.run(
        [*command, "publish", "vg", "owlv2", str(tiny_owl), "--backend", "owl"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "name@version" in bad.stderr
