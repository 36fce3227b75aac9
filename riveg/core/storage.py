"""Object storage behind one interface: a local folder (embedded) or an S3/MinIO bucket.

Only object keys travel in messages and RPCs; bytes live here.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from riveg.core.config import ConfigError, S3Settings, Settings
from riveg.core.network import is_loopback_host


class ObjectNotFound(KeyError):
    """The key names no object in the store."""


class ObjectStore(ABC):
    """Put and get bytes by key; keys are '/'-separated relative paths."""

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Store data under key (overwriting) and return the key."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""

    def put_json(self, key: str, value: Any) -> str:
        """Store a JSON document."""
        body = json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
        return self.put_bytes(key, body, "application/json")

    def get_json(self, key: str) -> Any:
        """Load a JSON document."""
        return json.loads(self.get_bytes(key))


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class StoreUnavailable(RuntimeError):
    """The object store could not be reached or answered "try later" (connection refused, a
    timeout, 503 SlowDown): a later try may succeed, unlike a missing key or a bad request."""


TRANSIENT_S3_CODES = frozenset({"ServiceUnavailable", "SlowDown", "InternalError",
                                "RequestTimeout", "XMinioServerNotInitialized"})  # fmt: skip


@contextmanager
def _transient_as_unavailable(endpoint: str, key: str) -> Iterator[None]:
    """Raise StoreUnavailable for the S3 failures that a later try may not have."""
    try:
        yield
    except S3Error as exc:
        if exc.code in TRANSIENT_S3_CODES:
            raise StoreUnavailable(f"S3 at {endpoint} ({key}): {exc.code}") from exc
        raise
    except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out, retries used up
        reason = getattr(exc, "reason", None) or exc
        raise StoreUnavailable(f"S3 at {endpoint} unreachable ({key}): {reason}") from exc


class LocalObjectStore(ObjectStore):
    """Objects as files under a root folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
        return key

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def __repr__(self) -> str:
        return f"LocalObjectStore({self.root})"


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3-compatible server (MinIO, nanio) through the minio client."""

    def __init__(
        self, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool = False
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        # Minio's own client waits up to 5 minutes per request; a store that is down should be
        # reported (and the step retried by its task) within seconds instead.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )  # fmt: skip
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                            http_client=http)  # fmt: skip

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        with _transient_as_unavailable(self.endpoint, key):
            self.client.put_object(
                self.bucket, _check_key(key), io.BytesIO(data), len(data),
                content_type=content_type,
            )  # fmt: skip
        return key

    def get_bytes(self, key: str) -> bytes:
        with _transient_as_unavailable(self.endpoint, key):
            try:
                response = self.client.get_object(self.bucket, _check_key(key))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise ObjectNotFound(key) from exc
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        with _transient_as_unavailable(self.endpoint, key):
            try:
                self.client.stat_object(self.bucket, _check_key(key))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    return False
                raise
        return True

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.endpoint}/{self.bucket})"


def open_store(settings: Settings) -> ObjectStore:
    """The object store the settings name (bucket created when missing)."""
    if settings.store.kind == "local":
        return LocalObjectStore(settings.store.path)
    s3 = settings.s3
    defaults = S3Settings()
    if (
        s3.access_key.get_secret_value() == defaults.access_key.get_secret_value()
        or s3.secret_key.get_secret_value() == defaults.secret_key.get_secret_value()
    ) and not is_loopback_host(s3.endpoint.rsplit(":", 1)[0]):
        raise ConfigError(
            f"the S3 credentials are the built-in defaults, refused for {s3.endpoint}: set "
            "RIVEG_S3_ACCESS_KEY and RIVEG_S3_SECRET_KEY (in Kubernetes: the riveg-store Secret)"
        )
    store = S3ObjectStore(
        s3.endpoint,
        s3.access_key.get_secret_value(),
        s3.secret_key.get_secret_value(),
        s3.bucket,
        s3.secure,
    )
    store.ensure_bucket()
    return store
