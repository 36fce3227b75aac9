"""Settings sources and the two object stores behind one interface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from riveg.core.config import ConfigError, load_settings, settings_env, unknown_variables
from riveg.core.storage import LocalObjectStore, ObjectNotFound, S3ObjectStore, open_store


def test_env_beats_file_and_overrides_beat_env(tmp_path, monkeypatch) -> None:
    config = tmp_path / "riveg.toml"
    config.write_text(
        '[vg]\nbackend = "from-file"\n[seg]\nbackend = "from-file"\n'
        '[pipeline]\nknowledge = true\n[s3]\nsecret_key = "file-secret"\n'
    )
    monkeypatch.setenv("RIVEG_SEG_BACKEND", "from-env")
    settings = load_settings(str(config), mner_backend="explicit")
    assert settings.vg.backend == "from-file"
    assert settings.vg.addr == "127.0.0.1:50054", "a section given in part keeps its defaults"
    assert settings.seg.backend == "from-env"
    assert settings.mner.backend == "explicit"
    assert settings.pipeline.knowledge is True
    assert settings.s3.secret_key.get_secret_value() == "file-secret"


def test_credentials_are_secret(monkeypatch) -> None:
    """No credential shows in a repr or a log line of the settings."""
    monkeypatch.setenv("RIVEG_S3_SECRET_KEY", "s3-very-secret")
    monkeypatch.setenv("RIVEG_LLM_API_KEY", "sk-very-secret")
    monkeypatch.setenv("RIVEG_BROKER_URL", "amqp://riveg:very-secret@rabbitmq:5672//")
    settings = load_settings()
    assert "very-secret" not in repr(settings)
    assert settings.llm.api_key.get_secret_value() == "sk-very-secret"
    assert not settings.embedded and settings.store.kind == "s3"


def test_settings_env_rebuilds_the_same_settings(tmp_path, monkeypatch) -> None:
    """What `riveg up` hands its children: the same settings, flags and file included."""
    config = tmp_path / "riveg.toml"
    config.write_text('[vg]\nmodel = "owlv2@2"\n[llm]\napi_key = "sk-1"\n')
    settings = load_settings(config, broker_url="amqp://x", models_torch_threads=3)
    for name in [n for n in os.environ if n.startswith("RIVEG_")]:
        monkeypatch.delenv(name)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


def test_unknown_keys_are_one_line_errors(tmp_path, monkeypatch) -> None:
    """A key from before the sections, or a typo inside one, is refused with its name, in one
    line; never silently ignored (``broker_url = ...`` would otherwise mean embedded mode)."""
    config = tmp_path / "old.toml"
    config.write_text('broker_url = "amqp://x"\n')
    with pytest.raises(ConfigError, match="'broker_url' is not a section") as error:
        load_settings(config)
    assert "\n" not in str(error.value)
    monkeypatch.setenv("RIVEG_LLM_API_BAS", "http://x")
    with pytest.raises(ConfigError, match=r"RIVEG_LLM_API_BAS \(\[llm\] api_bas\): Extra inputs"):
        load_settings()
    monkeypatch.delenv("RIVEG_LLM_API_BAS")
    monkeypatch.setenv("RIVEG_GRPC_WORKERS", "abc")
    with pytest.raises(ConfigError, match=r"RIVEG_GRPC_WORKERS .*valid integer.*\(got 'abc'\)"):
        load_settings()


def test_variables_of_no_section_are_reported() -> None:
    environ = {"RIVEG_CACHE_DIR": "/x", "RIVEG_MODELS_CACHE_DIR": "/y", "RIVEG_CONFIG": "a.toml",
               "RIVEG_DATASETS": "/d", "PATH": "/bin"}  # fmt: skip
    assert unknown_variables(environ) == ["RIVEG_CACHE_DIR"]


def test_unknown_flat_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown setting 'colour_depth'"):
        load_settings(colour_depth=3)


def test_empty_optional_values_are_unset(tmp_path, monkeypatch) -> None:
    """A ConfigMap may set RIVEG_MNER_MODEL= (empty) for the weights in the image."""
    monkeypatch.setenv("RIVEG_MNER_MODEL", "")
    assert load_settings().mner.model is None
    monkeypatch.setenv("RIVEG_MNER_MODEL", str(tmp_path))
    assert load_settings().mner.model == str(tmp_path)
    monkeypatch.setenv("RIVEG_MODELS_STORE_PATH", "")
    assert load_settings().models.store_path is None
    monkeypatch.setenv("RIVEG_MODELS_STORE_PATH", str(tmp_path))
    assert load_settings().models.store_path == tmp_path


def test_store_defaults_follow_the_mode(monkeypatch) -> None:
    monkeypatch.delenv("RIVEG_STORE_KIND", raising=False)
    monkeypatch.delenv("RIVEG_BROKER_URL", raising=False)
    assert load_settings().store.kind == "local" and load_settings().embedded
    distributed = load_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert distributed.store.kind == "s3" and not distributed.embedded


def test_missing_config_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(str(tmp_path / "absent.toml"))


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        load_settings().stage("ocr")


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


def test_commands_report_a_bad_environment_in_one_line(tmp_path) -> None:
    """Importing the commands parses no settings (the Celery app reads them on first use), so a
    bad value gives the command's one-line error, and --help still works."""
    env = {**os.environ, "RIVEG_GRPC_WORKERS": "abc", "RIVEG_STORE_PATH": str(tmp_path)}
    riveg = str(Path(sys.executable).parent / "riveg")
    helped = subprocess.run(
        [riveg, "worker", "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0, helped.stderr
    done = subprocess.run(
        [riveg, "worker", "pipeline", "--broker", "amqp://guest:guest@127.0.0.1:1//"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: bad configuration: RIVEG_GRPC_WORKERS ([grpc] workers)")
    )
