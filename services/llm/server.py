"""LLM gRPC transport: Knowledge and Expand."""

from __future__ import annotations

from riveg.common.backend import InvalidInput
from riveg.common.config import Settings
from riveg.common.rpc import StageServicer, StageSpec, build_stage_spec, check_deadline
from riveg.common.storage import ObjectStore
from riveg.v1 import llm_pb2, llm_pb2_grpc
from services.llm.backends import LLM_BACKENDS, referring_expression


class LlmServicer(StageServicer, llm_pb2_grpc.LlmServiceServicer):
    """Serves riveg.v1.LlmService with one backend."""

    def Knowledge(self, request, context):
        if not request.text.strip():
            raise InvalidInput("the post text is empty")
        check_deadline(context)
        knowledge = self.backend.knowledge(request.text, request.image_description)
        return llm_pb2.KnowledgeResponse(knowledge=knowledge, model=self.backend.model)

    def Expand(self, request, context):
        check_deadline(context)
        entities = list(request.entities)
        descriptions = self.backend.expand(
            request.text, [{"text": e.text, "type": e.type} for e in entities], request.knowledge
        )
        response = llm_pb2.ExpandResponse(model=self.backend.model)
        for entity, description in zip(entities, descriptions, strict=True):
            message = response.entities.add()
            message.CopyFrom(entity)
            message.expression = referring_expression(entity.text, entity.type, description)
        return response


def build_spec(settings: Settings, store: ObjectStore) -> StageSpec:
    """The LLM stage as configured (RIVEG_LLM_BACKEND)."""
    return build_stage_spec(
        "llm",
        "riveg.v1.LlmService",
        LLM_BACKENDS,
        LlmServicer,
        llm_pb2_grpc.add_LlmServiceServicer_to_server,
        settings,
        store,
    )
