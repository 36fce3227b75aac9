"""MNER gRPC transport: RecognizeRequest -> backend -> RecognizeResponse."""

from __future__ import annotations

from riveg.common.backend import InvalidInput
from riveg.common.config import Settings
from riveg.common.messages import entity_to_proto
from riveg.common.rpc import StageServicer, StageSpec, build_stage_spec, check_deadline
from riveg.common.storage import ObjectStore
from riveg.v1 import mner_pb2, mner_pb2_grpc
from services.mner.backends import MNER_BACKENDS


class MnerServicer(StageServicer, mner_pb2_grpc.MnerServiceServicer):
    """Serves riveg.v1.MnerService with one backend."""

    def Recognize(self, request, context):
        if not request.text.strip():
            raise InvalidInput("the post text is empty")
        check_deadline(context)
        entities = self.backend.recognize([request.text], [request.knowledge or None])[0]
        return mner_pb2.RecognizeResponse(
            entities=[entity_to_proto(e) for e in entities], model=self.backend.model
        )


def build_spec(settings: Settings, store: ObjectStore) -> StageSpec:
    """The MNER stage as configured (RIVEG_MNER_BACKEND)."""
    return build_stage_spec(
        "mner",
        "riveg.v1.MnerService",
        MNER_BACKENDS,
        MnerServicer,
        mner_pb2_grpc.add_MnerServiceServicer_to_server,
        settings,
        store,
    )
