"""LLM gRPC transport: Knowledge, Expand and Describe."""

from __future__ import annotations

from riveg.common.backend import InvalidInput
from riveg.common.config import Settings
from riveg.common.rpc import StageServicer, StageSpec, check_deadline
from riveg.common.storage import ObjectStore
from riveg.llm.cache import GenerationCache
from riveg.llm.describe import ImageDescriber
from riveg.modelstore.manager import ModelManager
from riveg.v1 import llm_pb2, llm_pb2_grpc
from services.llm.backends import LLM_BACKENDS, LlmBackend, LlmRouter, referring_expression

# A call must leave the LLM stage at least this long: shorter deadlines are refused on arrival
# (DEADLINE_EXCEEDED) rather than started, even when the answer may sit in the cache.
MIN_DEADLINE_S = 0.05


class LlmServicer(StageServicer, llm_pb2_grpc.LlmServiceServicer):
    """Serves riveg.v1.LlmService with the backend of each job type (an LlmRouter)."""

    def __init__(self, models: ModelManager, store: ObjectStore) -> None:
        super().__init__(models, store)
        settings = self.backend.settings
        cache = GenerationCache(store) if settings.llm_cache and store else None
        self.describer = ImageDescriber(settings, cache)

    def _for_job(self, job: str) -> LlmBackend:
        # Read the answering model once; a backend swapped in by ModelAdmin/Load serves both jobs.
        current = self.backend
        return current.for_job(job) if isinstance(current, LlmRouter) else current

    def Knowledge(self, request, context):
        if not request.text.strip():
            raise InvalidInput("the post text is empty")
        check_deadline(context, MIN_DEADLINE_S)
        description = request.image_description
        if not description.strip() and (request.image.key or request.image_id):
            description = self._describe(request.image, request.image_id).text
        backend = self._for_job("knowledge")
        knowledge = backend.knowledge(request.text, description)
        return llm_pb2.KnowledgeResponse(knowledge=knowledge, model=backend.model)

    def Expand(self, request, context):
        check_deadline(context, MIN_DEADLINE_S)
        entities = list(request.entities)
        backend = self._for_job("expand")
        descriptions = backend.expand(
            request.text, [{"text": e.text, "type": e.type} for e in entities], request.knowledge
        )
        response = llm_pb2.ExpandResponse(model=backend.model)
        for entity, description in zip(entities, descriptions, strict=True):
            message = response.entities.add()
            message.CopyFrom(entity)
            message.expression = referring_expression(entity.text, entity.type, description)
        return response

    def Describe(self, request, context):
        check_deadline(context, MIN_DEADLINE_S)
        if not request.image.key and not request.image_id:
            raise InvalidInput("give an image (object key) or a dataset image id")
        description = self._describe(request.image, request.image_id)
        return llm_pb2.DescribeResponse(
            description=description.text, source=description.source, model=description.model
        )

    def _describe(self, image, image_id: str):  # type: ignore[no-untyped-def]
        # A released caption needs no pixels; read the image only when it will be looked at.
        if image_id and not self.describer.settings.llm_vision_model:
            caption = self.describer.captions.get(image_id)
            if caption:
                return self.describer.describe(None, image_id)
        data = self.store.get_bytes(image.key) if image.key else None
        return self.describer.describe(data, image_id)


def build_spec(settings: Settings, store: ObjectStore) -> StageSpec:
    """The LLM stage as configured: RIVEG_LLM_KNOWLEDGE_BACKEND and RIVEG_LLM_EXPAND_BACKEND
    (both default to RIVEG_LLM_BACKEND), each backend created once."""
    router = LlmRouter(settings, store)
    models = ModelManager("llm", LLM_BACKENDS, settings, router, router.backend_name)
    return StageSpec(
        stage="llm",
        service_name="riveg.v1.LlmService",
        servicer=LlmServicer(models, store),
        add_to_server=llm_pb2_grpc.add_LlmServiceServicer_to_server,
        models=models,
    )
