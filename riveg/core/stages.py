"""The one declaration of the five model stages.

Each stage is its own gRPC service, Celery queue and configuration section. Everything that lists
stages (default ports, queues, client stubs, servicers, task routes, the CLI's choices, the
tests) derives from :data:`STAGE_TABLE`. Code objects are named by import path, resolved by the
serving layer, so this module stays a leaf.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One model stage: its name, gRPC service, default port and queue."""

    name: str
    service: str  # the proto service's short name, e.g. "VgService"
    port: int  # default port of its server
    servicer: str  # "module:Class" of its gRPC servicer, under services/<name>/
    backend: str  # the backend served when none is configured

    @property
    def service_name(self) -> str:
        """The full gRPC service name, e.g. ``riveg.v1.VgService``."""
        return f"riveg.v1.{self.service}"

    @property
    def grpc_module(self) -> str:
        """The generated module holding the stub and the servicer registration."""
        return f"riveg.v1.{self.name}_pb2_grpc"

    @property
    def queue(self) -> str:
        """Its Celery queue, before the configured prefix (``<prefix>.<queue>``)."""
        return self.name

    @property
    def default_addr(self) -> str:
        """Where clients find its server unless configured otherwise."""
        return f"127.0.0.1:{self.port}"


STAGE_TABLE: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("llm", "LlmService", 50051, "services.llm.server:LlmServicer", "gemma"),
        Stage("mner", "MnerService", 50052, "services.mner.server:MnerServicer", "crf"),
        Stage("ve", "VeService", 50053, "services.ve.server:VeServicer", "person"),
        Stage("vg", "VgService", 50054, "services.vg.server:VgServicer", "person"),
        Stage("seg", "SegService", 50055, "services.seg.server:SegServicer", "selfie"),
    )
}
STAGES: tuple[str, ...] = tuple(STAGE_TABLE)
"""The stage names, in pipeline order."""
PIPELINE_QUEUE = "pipeline"
"""The queue of the steps that belong to no stage (store, assemble)."""
QUEUES: tuple[str, ...] = (*STAGES, PIPELINE_QUEUE)


def get_stage(name: str) -> Stage:
    """The stage called ``name``; ValueError naming the known stages otherwise."""
    try:
        return STAGE_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(STAGES)}") from None
