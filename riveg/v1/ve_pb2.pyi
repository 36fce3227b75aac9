from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from riveg.v1 import common_pb2 as _common_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class EntailRequest(_message.Message):
    __slots__ = ("entities", "image")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageRef
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    def __init__(self, image: _common_pb2.ImageRef | _Mapping | None = ..., entities: _Iterable[_common_pb2.Entity | _Mapping] | None = ...) -> None: ...

class Entailment(_message.Message):
    __slots__ = ("groundable", "score")
    GROUNDABLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    groundable: bool
    score: float
    def __init__(self, groundable: bool = ..., score: float | None = ...) -> None: ...

class EntailResponse(_message.Message):
    __slots__ = ("model", "results")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Entailment]
    model: str
    def __init__(self, results: _Iterable[Entailment | _Mapping] | None = ..., model: str | None = ...) -> None: ...
