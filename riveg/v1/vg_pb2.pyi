from riveg.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GroundRequest(_message.Message):
    __slots__ = ("image", "entities")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageRef
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., entities: _Optional[_Iterable[_Union[_common_pb2.Entity, _Mapping]]] = ...) -> None: ...

class Grounding(_message.Message):
    __slots__ = ("found", "box", "score")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    box: _common_pb2.Box
    score: float
    def __init__(self, found: bool = ..., box: _Optional[_Union[_common_pb2.Box, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class GroundResponse(_message.Message):
    __slots__ = ("results", "model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Grounding]
    model: str
    def __init__(self, results: _Optional[_Iterable[_Union[Grounding, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...
