"""VG gRPC transport: all entities of one image in one Ground call."""

from __future__ import annotations

from riveg.serving.messages import box_to_proto, entity_from_proto
from riveg.serving.servicer import StageServicer, stage_rpc
from riveg.v1 import vg_pb2, vg_pb2_grpc
from services.vg.backends import VG_BACKENDS


class VgServicer(StageServicer, vg_pb2_grpc.VgServiceServicer):
    """Serves riveg.v1.VgService with one backend, reading images from the object store."""

    stage = "vg"
    backends = VG_BACKENDS

    @stage_rpc(vg_pb2.GroundResponse)
    def Ground(self, backend, request, context, response):
        if not request.entities:
            return
        self.check_count(len(request.entities))
        image = self.image(request.image, context)
        entities = [entity_from_proto(e) for e in request.entities]
        ran, groundings = self.batched("ground", (image, entities), context)
        response.model = ran.model
        for box, score in groundings:
            result = response.results.add(found=box is not None, score=score)
            if box is not None:
                result.box.CopyFrom(box_to_proto(box))
