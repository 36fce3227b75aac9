from riveg.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentRequest(_message.Message):
    __slots__ = ("image", "boxes", "output_prefix")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageRef
    boxes: _containers.RepeatedCompositeFieldContainer[_common_pb2.Box]
    output_prefix: str
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., boxes: _Optional[_Iterable[_Union[_common_pb2.Box, _Mapping]]] = ..., output_prefix: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("masks", "model")
    MASKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[_common_pb2.Mask]
    model: str
    def __init__(self, masks: _Optional[_Iterable[_Union[_common_pb2.Mask, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...
