"""Settings sources and the two object stores behind one interface."""

from __future__ import annotations

import pytest

from riveg.common.config import load_settings
from riveg.common.storage import LocalObjectStore, ObjectNotFound, S3ObjectStore, open_store


def test_env_beats_file_and_overrides_beat_env(tmp_path, monkeypatch) -> None:
    config = tmp_path / "riveg.toml"
    config.write_text('vg_backend = "from-file"\nseg_backend = "from-file"\nknowledge = true\n')
    monkeypatch.setenv("RIVEG_SEG_BACKEND", "from-env")
    settings = load_settings(str(config), mner_backend="explicit")
    assert settings.vg_backend == "from-file"
    assert settings.seg_backend == "from-env"
    assert settings.mner_backend == "explicit"
    assert settings.knowledge is True


def test_empty_optional_paths_are_unset(tmp_path, monkeypatch) -> None:
    """A ConfigMap may set RIVEG_MNER_MODEL= (empty) for the weights in the image."""
    monkeypatch.setenv("RIVEG_MNER_MODEL", "")
    assert load_settings().mner_model is None
    monkeypatch.setenv("RIVEG_MNER_MODEL", str(tmp_path))
    assert load_settings().mner_model == tmp_path
    monkeypatch.setenv("RIVEG_MODEL_STORE_PATH", "")
    assert load_settings().model_store_path is None
    monkeypatch.setenv("RIVEG_MODEL_STORE_PATH", str(tmp_path))
    assert load_settings().model_store_path == tmp_path


def test_store_defaults_follow_the_mode(monkeypatch) -> None:
    monkeypatch.delenv("RIVEG_STORE", raising=False)
    monkeypatch.delenv("RIVEG_BROKER_URL", raising=False)
    assert load_settings().store == "local" and load_settings().embedded
    distributed = load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert distributed.store == "s3" and not distributed.embedded


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(str(tmp_path / "absent.toml"))


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        load_settings().stage_addr("ocr")


def _exercise(store) -> None:
    store.put_bytes("images/a/b.bin", b"\x00\x01pixels")
    assert store.get_bytes("images/a/b.bin") == b"\x00\x01pixels"
    assert store.exists("images/a/b.bin")
    assert not store.exists("images/a/missing.bin")
    store.put_json("results/x.json", {"id": "x", "entities": [1, 2]})
    assert store.get_json("results/x.json") == {"id": "x", "entities": [1, 2]}
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nothing/here")
    for bad in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(ValueError):
            store.put_bytes(bad, b"x")


def test_local_store(tmp_path) -> None:
    store = LocalObjectStore(tmp_path)
    _exercise(store)
    assert (tmp_path / "images" / "a" / "b.bin").is_file()
    assert not list(tmp_path.rglob(".tmp-*")), "temporary files were left behind"


def test_s3_store_against_nanio(s3_server, monkeypatch) -> None:
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    store = open_store(load_settings())
    assert isinstance(store, S3ObjectStore)
    _exercise(store)
    store.ensure_bucket()  # idempotent
