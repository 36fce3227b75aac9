"""LLM gRPC transport: Knowledge, Expand and Describe."""

from __future__ import annotations

from riveg.core.config import Settings
from riveg.core.errors import InvalidInput
from riveg.core.storage import ObjectStore
from riveg.serving.manager import ModelManager
from riveg.serving.server import check_deadline
from riveg.serving.servicer import StageServicer, stage_rpc
from riveg.v1 import llm_pb2, llm_pb2_grpc
from services.llm.backends import (
    LLM_BACKENDS,
    GenerativeBackend,
    LlmBackend,
    LlmRouter,
    referring_expression,
)
from services.llm.cache import GenerationCache
from services.llm.describe import Description, ImageDescriber

# A call must leave the LLM stage at least this long: shorter deadlines are refused on arrival
# (DEADLINE_EXCEEDED) rather than started, even when the answer may sit in the cache.
MIN_DEADLINE_S = 0.05


class LlmServicer(StageServicer, llm_pb2_grpc.LlmServiceServicer):
    """Serves riveg.v1.LlmService with the backend of each job type (an LlmRouter)."""

    stage = "llm"
    backends = LLM_BACKENDS

    def __init__(self, models: ModelManager, store: ObjectStore | None) -> None:
        super().__init__(models, store)
        settings = self.backend.settings
        cache = GenerationCache(store) if settings.llm.cache and store else None
        self.describer = ImageDescriber(settings, cache)

    @classmethod
    def create_models(cls, settings: Settings, store: ObjectStore | None) -> ModelManager:
        """The model RIVEG_LLM_MODEL names (for both jobs) when set; else
        RIVEG_LLM_KNOWLEDGE_BACKEND and RIVEG_LLM_EXPAND_BACKEND (both default to
        RIVEG_LLM_BACKEND) behind one router, each backend created once."""
        if settings.llm.model:
            models = super().create_models(settings, store)
            if isinstance(models.current, GenerativeBackend) and store and settings.llm.cache:
                models.current.cache = GenerationCache(store)
            return models
        router = LlmRouter(settings, store)
        return ModelManager("llm", LLM_BACKENDS, settings, router, router.backend_name)

    @stage_rpc(llm_pb2.KnowledgeResponse)
    def Knowledge(self, current, request, context, response):
        self.check_text(request.text)
        check_deadline(context, MIN_DEADLINE_S)
        description = request.image_description
        if not description.strip() and (request.image.key or request.image_id):
            description = self._describe(request.image, request.image_id).text
        item = (request.text, description)
        _, (model, knowledge) = self.batched("knowledge", item, context, _knowledge)
        response.knowledge = knowledge
        response.model = model

    @stage_rpc(llm_pb2.ExpandResponse)
    def Expand(self, current, request, context, response):
        self.check_text(request.text, required=False)
        self.check_count(len(request.entities))
        check_deadline(context, MIN_DEADLINE_S)
        entities = list(request.entities)
        item = (request.text, [{"text": e.text, "type": e.type} for e in entities],
                request.knowledge)  # fmt: skip
        _, (model, descriptions) = self.batched("expand", item, context, _expand)
        response.model = model
        for entity, description in zip(entities, descriptions, strict=True):
            message = response.entities.add()
            message.CopyFrom(entity)
            message.expression = referring_expression(entity.text, entity.type, description)

    @stage_rpc(llm_pb2.DescribeResponse)
    def Describe(self, current, request, context, response):
        check_deadline(context, MIN_DEADLINE_S)
        if not request.image.key and not request.image_id:
            raise InvalidInput("give an image (object key) or a dataset image id")
        description = self._describe(request.image, request.image_id)
        response.description = description.text
        response.source = description.source
        response.model = description.model

    def _describe(self, image, image_id: str) -> Description:
        # A released caption needs no pixels; read the image only when it will be looked at.
        if image_id and not self.describer.settings.llm.vision_model:
            caption = self.describer.captions.get(image_id)
            if caption:
                return self.describer.describe(None, image_id)
        data = self.store.get_bytes(image.key) if image.key else None
        return self.describer.describe(data, image_id)


def for_job(current: LlmBackend, job: str) -> LlmBackend:
    """The backend of a job type (a backend swapped in by ModelAdmin/Load serves both)."""
    return current.for_job(job) if isinstance(current, LlmRouter) else current


def _expand(current: LlmBackend, items: list) -> list:
    """Every entity of every waiting Expand call in one generation: (model, descriptions)."""
    backend = for_job(current, "expand")
    return [r if isinstance(r, BaseException) else (backend.model, r)
            for r in backend.expand_batch(items)]  # fmt: skip


def _knowledge(current: LlmBackend, items: list) -> list:
    """The knowledge paragraphs of the waiting Knowledge calls in one generation."""
    backend = for_job(current, "knowledge")
    return [r if isinstance(r, BaseException) else (backend.model, r)
            for r in backend.knowledge_batch(items)]  # fmt: skip
