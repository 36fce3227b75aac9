"""Where each stage's server code and client stub live, and how to reach the servers."""

from __future__ import annotations

import importlib
from typing import Any

from riveg import STAGES
from riveg.common.config import Settings
from riveg.common.rpc import StageClient, StageSpec
from riveg.common.storage import ObjectStore
from riveg.v1 import llm_pb2_grpc, mner_pb2_grpc, seg_pb2_grpc, ve_pb2_grpc, vg_pb2_grpc

STUBS: dict[str, type] = {
    "llm": llm_pb2_grpc.LlmServiceStub,
    "mner": mner_pb2_grpc.MnerServiceStub,
    "ve": ve_pb2_grpc.VeServiceStub,
    "vg": vg_pb2_grpc.VgServiceStub,
    "seg": seg_pb2_grpc.SegServiceStub,
}


def build_stage(stage: str, settings: Settings, store: ObjectStore) -> StageSpec:
    """The stage's servicer and backend, from ``services.<stage>.server.build_spec``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    module: Any = importlib.import_module(f"services.{stage}.server")
    return module.build_spec(settings, store)


def connect(stage: str, settings: Settings, addr: str | None = None) -> StageClient:
    """A client of the stage's server (at its configured address unless addr is given)."""
    return StageClient(stage, addr or settings.stage_addr(stage), STUBS[stage], settings)
