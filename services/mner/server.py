"""MNER gRPC transport: RecognizeRequest -> backend -> RecognizeResponse."""

from __future__ import annotations

from riveg.serving.messages import entity_to_proto
from riveg.serving.servicer import StageServicer, stage_rpc
from riveg.v1 import mner_pb2, mner_pb2_grpc
from services.mner.backends import MNER_BACKENDS, MnerBackend


class MnerServicer(StageServicer, mner_pb2_grpc.MnerServiceServicer):
    """Serves riveg.v1.MnerService with one backend."""

    stage = "mner"
    backends = MNER_BACKENDS

    @stage_rpc(mner_pb2.RecognizeResponse)
    def Recognize(self, backend, request, context, response):
        self.check_text(request.text)
        item = (request.text, request.knowledge or None)
        ran, entities = self.batched("recognize", item, context, _recognize)
        response.model = ran.model
        response.entities.extend(entity_to_proto(e) for e in entities)


def _recognize(backend: MnerBackend, items: list[tuple[str, str | None]]) -> list:
    """Many posts' texts in one forward (the backend takes a batch)."""
    return backend.recognize([text for text, _ in items], [knowledge for _, knowledge in items])
