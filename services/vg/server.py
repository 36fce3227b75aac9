"""VG gRPC transport: all entities of one image in one Ground call."""

from __future__ import annotations

from riveg.common.config import Settings
from riveg.common.images import fetch_image
from riveg.common.messages import box_to_proto, entity_from_proto
from riveg.common.rpc import StageServicer, StageSpec, build_stage_spec, check_deadline
from riveg.common.storage import ObjectStore
from riveg.v1 import vg_pb2, vg_pb2_grpc
from services.vg.backends import VG_BACKENDS


class VgServicer(StageServicer, vg_pb2_grpc.VgServiceServicer):
    """Serves riveg.v1.VgService with one backend, reading images from the object store."""

    def Ground(self, request, context):
        backend = self.backend  # read once: a hot swap cannot mix two models
        response = vg_pb2.GroundResponse(model=backend.model)
        if not request.entities:
            return response
        image = fetch_image(self.store, request.image.key)
        check_deadline(context)
        entities = [entity_from_proto(e) for e in request.entities]
        for box, score in backend.ground(image, entities):
            result = response.results.add(found=box is not None, score=score)
            if box is not None:
                result.box.CopyFrom(box_to_proto(box))
        return response


def build_spec(settings: Settings, store: ObjectStore) -> StageSpec:
    """The VG stage as configured (RIVEG_VG_MODEL, else RIVEG_VG_BACKEND)."""
    return build_stage_spec(
        "vg",
        "riveg.v1.VgService",
        VG_BACKENDS,
        VgServicer,
        vg_pb2_grpc.add_VgServiceServicer_to_server,
        settings,
        store,
    )
