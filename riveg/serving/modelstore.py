"""Versioned model folders in an object store, fetched to a local cache for loading."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riveg.core.config import Settings
from riveg.core.logging import get_logger
from riveg.core.storage import LocalObjectStore, ObjectNotFound, ObjectStore, open_store

MANIFEST = "riveg-model.json"
_REF = re.compile(r"([\w.\-]+)@([\w.\-]+)")
log = get_logger("riveg.serving.modelstore")


@dataclass(frozen=True)
class ModelRef:
    """A model version: ``name@version``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_model_ref(text: str) -> ModelRef:
    """``name@version`` -> ModelRef; ValueError with the expected form otherwise."""
    match = _REF.fullmatch(text.strip())
    if not match:
        raise ValueError(f"model {text!r} is not of the form name@version (e.g. owlv2@2)")
    return ModelRef(match.group(1), match.group(2))


@dataclass(frozen=True)
class StoredModel:
    """A version present in the store, with the backend its manifest names."""

    stage: str
    ref: ModelRef
    backend: str


class ModelStore:
    """``<prefix>/<stage>/<name>/<version>/`` folders in an object store.

    Local stores are read in place; S3 objects are downloaded once into ``cache_dir`` (written to
    a temporary folder and renamed, so a crashed download is never mistaken for a model).
    """

    def __init__(self, store: ObjectStore, cache_dir: Path, prefix: str = "models") -> None:
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.prefix = prefix.strip("/")

    def _key(self, stage: str, ref: ModelRef, file: str = "") -> str:
        parts = [self.prefix, stage, ref.name, ref.version, file]
        return "/".join(p for p in parts if p)

    def manifest(self, stage: str, ref: ModelRef) -> dict[str, Any] | None:
        """The version's manifest, or None when the store has no such version."""
        try:
            return json.loads(self.store.get_bytes(self._key(stage, ref, MANIFEST)))
        except ObjectNotFound:
            return None

    def list(self, stage: str) -> list[StoredModel]:
        """Every complete version of the stage, sorted by name and version."""
        found = []
        for key in self._manifest_keys(stage):
            parts = key.split("/")
            ref = ModelRef(parts[-3], parts[-2])
            manifest = json.loads(self.store.get_bytes(key))
            found.append(StoredModel(stage, ref, str(manifest.get("backend", ""))))
        return sorted(found, key=lambda m: (m.ref.name, m.ref.version))

    def _manifest_keys(self, stage: str) -> list[str]:
        base = "/".join(p for p in (self.prefix, stage) if p)
        if isinstance(self.store, LocalObjectStore):
            root = self.store.root
            return [p.relative_to(root).as_posix() for p in (root / base).glob(f"*/*/{MANIFEST}")]
        client = getattr(self.store, "client", None)
        if client is None:
            raise NotImplementedError(f"cannot list models in {self.store!r}")
        objects = client.list_objects(self.store.bucket, prefix=base + "/", recursive=True)
        return [
            o.object_name
            for o in objects
            if o.object_name.endswith("/" + MANIFEST)
            and o.object_name.count("/") == base.count("/") + 3
        ]

    def fetch(self, stage: str, ref: ModelRef) -> Path:
        """A local folder holding the version's files; FileNotFoundError when it is not stored."""
        manifest = self.manifest(stage, ref)
        if manifest is None:
            raise FileNotFoundError(f"no model {stage}/{ref} in {self.store!r}")
        if isinstance(self.store, LocalObjectStore):
            return self.store.root / self._key(stage, ref)
        target = self.cache_dir / stage / ref.name / ref.version
        if (target / MANIFEST).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{ref.version}-"))
        try:
            for file in manifest.get("files", []):
                path = staging / file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.store.get_bytes(self._key(stage, ref, file)))
            (staging / MANIFEST).write_text(json.dumps(manifest))
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("model fetched", stage=stage, model=str(ref), path=str(target))
        return target

    def publish(self, stage: str, ref: ModelRef, folder: Path, backend: str) -> str:
        """Upload a local model folder as a version (files first, manifest last); its key."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        files = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name != MANIFEST
        )
        for file in files:
            self.store.put_bytes(self._key(stage, ref, file), (folder / file).read_bytes())
        manifest = {"backend": backend, "files": files, "model": str(ref)}
        self.store.put_bytes(
            self._key(stage, ref, MANIFEST), json.dumps(manifest).encode(), "application/json"
        )
        return self._key(stage, ref)


def open_model_store(settings: Settings, store: ObjectStore | None = None) -> ModelStore:
    """The configured model store: RIVEG_MODELS_STORE_PATH (a local folder of
    ``<stage>/<name>/<version>/``) if set, else ``models/`` in the object store."""
    cache = settings.models.cache_dir / "models"
    if settings.models.store_path is not None:
        return ModelStore(LocalObjectStore(settings.models.store_path), cache, prefix="")
    return ModelStore(store or open_store(settings), cache, prefix="models")
