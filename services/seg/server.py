"""SEG gRPC transport: all boxes of one image in one Segment call; masks as RLE or PNG keys."""

from __future__ import annotations

from riveg.common.config import Settings
from riveg.common.images import fetch_image, mask_png, mask_to_rle
from riveg.common.messages import box_from_proto
from riveg.common.rpc import StageServicer, StageSpec, build_stage_spec, check_deadline
from riveg.common.storage import ObjectStore
from riveg.v1 import seg_pb2, seg_pb2_grpc
from services.seg.backends import SEG_BACKENDS


class SegServicer(StageServicer, seg_pb2_grpc.SegServiceServicer):
    """Serves riveg.v1.SegService; with an output_prefix, masks go to the store as PNGs."""

    def Segment(self, request, context):
        backend = self.backend  # read once: a hot swap cannot mix two models
        response = seg_pb2.SegmentResponse(model=backend.model)
        if not request.boxes:
            return response
        image = fetch_image(self.store, request.image.key)
        check_deadline(context)
        masks = backend.segment(image, [box_from_proto(b) for b in request.boxes])
        prefix = request.output_prefix.rstrip("/")
        for index, mask in enumerate(masks):
            height, width = mask.shape
            if prefix:
                key = self.store.put_bytes(f"{prefix}/{index}.png", mask_png(mask), "image/png")
                response.masks.add(height=height, width=width, png_key=key)
            else:
                response.masks.add(
                    height=height, width=width, rle_counts=mask_to_rle(mask)["counts"]
                )
        return response


def build_spec(settings: Settings, store: ObjectStore) -> StageSpec:
    """The SEG stage as configured (RIVEG_SEG_MODEL, else RIVEG_SEG_BACKEND)."""
    return build_stage_spec(
        "seg",
        "riveg.v1.SegService",
        SEG_BACKENDS,
        SegServicer,
        seg_pb2_grpc.add_SegServiceServicer_to_server,
        settings,
        store,
    )
