"""The stage registry, resolved: each declared stage's client stub, servicer and server spec.

The declarations (:mod:`riveg.core.stages`) name code by import path; this module imports the
generated gRPC module and the stage's servicer (``services/<stage>/server.py``) on first use.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from riveg.core.config import Settings
from riveg.core.stages import Stage, get_stage
from riveg.core.storage import ObjectStore
from riveg.serving.client import StageClient
from riveg.serving.server import StageSpec


def _grpc_module(stage: Stage) -> Any:
    return importlib.import_module(stage.grpc_module)


def stub_class(name: str) -> type:
    """The generated client stub of a stage, e.g. ``VgServiceStub``."""
    stage = get_stage(name)
    return getattr(_grpc_module(stage), f"{stage.service}Stub")


@cache
def servicer_class(name: str) -> Any:
    """The stage's servicer class, from its declaration's ``module:Class``."""
    module_name, _, class_name = get_stage(name).servicer.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_stage(name: str, settings: Settings, store: ObjectStore | None) -> StageSpec:
    """The stage's servicer with the models its settings name, ready for a StageServer."""
    stage = get_stage(name)
    servicer_cls = servicer_class(name)
    models = servicer_cls.create_models(settings, store)
    return StageSpec(
        stage=stage,
        servicer=servicer_cls(models, store),
        add_to_server=getattr(_grpc_module(stage), f"add_{stage.service}Servicer_to_server"),
        models=models,
    )


def connect(name: str, settings: Settings, addr: str | None = None) -> StageClient:
    """A client of the stage's server (at its configured address unless addr is given)."""
    return StageClient(name, addr or settings.stage(name).addr, stub_class(name), settings)
