from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

from riveg.v1 import common_pb2 as _common_pb2

DESCRIPTOR: _descriptor.FileDescriptor

class KnowledgeRequest(_message.Message):
    __slots__ = ("image", "image_description", "text")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: _common_pb2.ImageRef
    image_description: str
    def __init__(self, text: str | None = ..., image: _common_pb2.ImageRef | _Mapping | None = ..., image_description: str | None = ...) -> None: ...

class KnowledgeResponse(_message.Message):
    __slots__ = ("knowledge", "model")
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    knowledge: str
    model: str
    def __init__(self, knowledge: str | None = ..., model: str | None = ...) -> None: ...

class ExpandRequest(_message.Message):
    __slots__ = ("entities", "knowledge", "text")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    knowledge: str
    def __init__(self, text: str | None = ..., entities: _Iterable[_common_pb2.Entity | _Mapping] | None = ..., knowledge: str | None = ...) -> None: ...

class ExpandResponse(_message.Message):
    __slots__ = ("entities", "model")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    model: str
    def __init__(self, entities: _Iterable[_common_pb2.Entity | _Mapping] | None = ..., model: str | None = ...) -> None: ...
