"""The model store: versioned model folders ``models/<stage>/<name>/<version>/`` in the object
store (S3/MinIO or a local folder), and the per-stage manager that loads, warms and hot-swaps
them (see ``riveg.modelstore.manager``).

A version folder holds the model's files plus ``riveg-model.json``: ``{"backend": KEY, "files":
[...]}``. The manifest is written last, so a half-uploaded version is never listed or loaded.
"""

from __future__ import annotations

from riveg.modelstore.store import (
    MANIFEST,
    ModelRef,
    ModelStore,
    StoredModel,
    open_model_store,
    parse_model_ref,
)

__all__ = [
    "MANIFEST",
    "ModelRef",
    "ModelStore",
    "StoredModel",
    "open_model_store",
    "parse_model_ref",
]
