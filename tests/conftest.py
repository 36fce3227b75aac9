"""Shared fixtures: the sample post, an in-process cluster of the five real stage servers, and
an S3 server (nanio) on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from riveg.core.config import Settings, load_settings
from riveg.orchestration.celery_app import configure_app
from riveg.orchestration.runtime import EmbeddedCluster, set_runtime
from riveg.sample import SAMPLE_IMAGE, SAMPLE_TEXT
from tests.support.processes import free_port, wait_port

__all__ = ["SAMPLE_IMAGE", "SAMPLE_TEXT", "free_port"]


@pytest.fixture(scope="session")
def sample_bytes() -> bytes:
    return SAMPLE_IMAGE.read_bytes()


@pytest.fixture(scope="session")
def embedded_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(store_kind="local", store_path=tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def embedded(embedded_settings: Settings) -> Iterator:
    """The five real stage servers in this process on loopback (an EmbeddedCluster)."""
    configure_app(embedded_settings)
    servers = EmbeddedCluster(embedded_settings)
    set_runtime(servers.start())
    yield servers
    set_runtime(None)
    servers.runtime.close()
    servers.stop()


@pytest.fixture(scope="session")
def cluster(embedded):
    """The runtime of the in-process cluster: store and a client per stage."""
    return embedded.runtime


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A nanio S3 server on a free loopback port; yields RIVEG_* settings that reach it."""
    nanio = shutil.which("nanio", path=str(Path(sys.executable).parent)) or shutil.which("nanio")
    if nanio is None:
        pytest.skip("nanio (the S3 test server) is not installed: pip install nanio")
    port = free_port()
    env = {**os.environ, "NANIO_ACCESS_KEY": "testkey", "NANIO_SECRET_KEY": "testsecret123"}
    process = subprocess.Popen(
        [nanio, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
         str(tmp_path_factory.mktemp("s3")), "--no-access-log", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        yield {
            "RIVEG_STORE_KIND": "s3",
            "RIVEG_S3_ENDPOINT": f"127.0.0.1:{port}",
            "RIVEG_S3_ACCESS_KEY": "testkey",
            "RIVEG_S3_SECRET_KEY": "testsecret123",
            "RIVEG_S3_BUCKET": "riveg-test",
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
