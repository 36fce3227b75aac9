"""VE gRPC transport: all entities of one image in one Entail call."""

from __future__ import annotations

from riveg.common.config import Settings
from riveg.common.images import fetch_image
from riveg.common.messages import entity_from_proto
from riveg.common.rpc import StageServicer, StageSpec, build_stage_spec, check_deadline
from riveg.common.storage import ObjectStore
from riveg.v1 import ve_pb2, ve_pb2_grpc
from services.ve.backends import VE_BACKENDS


class VeServicer(StageServicer, ve_pb2_grpc.VeServiceServicer):
    """Serves riveg.v1.VeService with one backend, reading images from the object store."""

    def Entail(self, request, context):
        backend = self.backend  # read once: a hot swap cannot mix two models
        response = ve_pb2.EntailResponse(model=backend.model)
        if not request.entities:
            return response
        image = fetch_image(self.store, request.image.key)
        check_deadline(context)
        entities = [entity_from_proto(e) for e in request.entities]
        for groundable, score in backend.entail(image, entities):
            response.results.add(groundable=groundable, score=score)
        return response


def build_spec(settings: Settings, store: ObjectStore) -> StageSpec:
    """The VE stage as configured (RIVEG_VE_MODEL, else RIVEG_VE_BACKEND)."""
    return build_stage_spec(
        "ve",
        "riveg.v1.VeService",
        VE_BACKENDS,
        VeServicer,
        ve_pb2_grpc.add_VeServiceServicer_to_server,
        settings,
        store,
    )
