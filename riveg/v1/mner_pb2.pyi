from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from riveg.v1 import common_pb2 as _common_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class RecognizeRequest(_message.Message):
    __slots__ = ("knowledge", "text")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    knowledge: str
    def __init__(self, text: str | None = ..., knowledge: str | None = ...) -> None: ...

class RecognizeResponse(_message.Message):
    __slots__ = ("entities", "model")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    model: str
    def __init__(self, entities: _Iterable[_common_pb2.Entity | _Mapping] | None = ..., model: str | None = ...) -> None: ...
