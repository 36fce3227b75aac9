"""SEG gRPC transport: all boxes of one image in one Segment call; masks as RLE or PNG keys."""

from __future__ import annotations

from riveg.core.images import mask_png, mask_to_rle
from riveg.serving.messages import box_from_proto
from riveg.serving.servicer import StageServicer, stage_rpc
from riveg.v1 import seg_pb2, seg_pb2_grpc
from services.seg.backends import SEG_BACKENDS


class SegServicer(StageServicer, seg_pb2_grpc.SegServiceServicer):
    """Serves riveg.v1.SegService; with an output_prefix, masks go to the store as PNGs."""

    stage = "seg"
    backends = SEG_BACKENDS

    @stage_rpc(seg_pb2.SegmentResponse)
    def Segment(self, backend, request, context, response):
        if not request.boxes:
            return
        self.check_count(len(request.boxes), "boxes")
        image = self.image(request.image, context)
        boxes = [box_from_proto(b) for b in request.boxes]
        ran, masks = self.batched("segment", (image, boxes), context)
        response.model = ran.model
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
