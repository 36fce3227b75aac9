"""VE gRPC transport: all entities of one image in one Entail call."""

from __future__ import annotations

from riveg.serving.messages import entity_from_proto
from riveg.serving.servicer import StageServicer, stage_rpc
from riveg.v1 import ve_pb2, ve_pb2_grpc
from services.ve.backends import VE_BACKENDS


class VeServicer(StageServicer, ve_pb2_grpc.VeServiceServicer):
    """Serves riveg.v1.VeService with one backend, reading images from the object store."""

    stage = "ve"
    backends = VE_BACKENDS

    @stage_rpc(ve_pb2.EntailResponse)
    def Entail(self, backend, request, context, response):
        if not request.entities:
            return
        self.check_count(len(request.entities))
        image = self.image(request.image, context)
        entities = [entity_from_proto(e) for e in request.entities]
        ran, results = self.batched("entail", (image, entities), context)
        response.model = ran.model
        for groundable, score in results:
            response.results.add(groundable=groundable, score=score)
