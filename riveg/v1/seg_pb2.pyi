from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from riveg.v1 import common_pb2 as _common_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRequest(_message.Message):
    __slots__ = ("boxes", "image", "output_prefix")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageRef
    boxes: _containers.RepeatedCompositeFieldContainer[_common_pb2.Box]
    output_prefix: str
    def __init__(self, image: _common_pb2.ImageRef | _Mapping | None = ..., boxes: _Iterable[_common_pb2.Box | _Mapping] | None = ..., output_prefix: str | None = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("masks", "model")
    MASKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Mask]
    model: str
    def __init__(self, masks: _Iterable[_common_pb2.Mask | _Mapping] | None = ..., model: str | None = ...) -> None: ...
