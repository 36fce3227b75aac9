from riveg.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KnowledgeRequest(_message.Message):
    __slots__ = ("text", "image", "image_description", "image_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: _common_pb2.ImageRef
    image_description: str
    image_id: str
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., image_description: _Optional[str] = ..., image_id: _Optional[str] = ...) -> None: ...

class KnowledgeResponse(_message.Message):
    __slots__ = ("knowledge", "model")
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    knowledge: str
    model: str
    def __init__(self, knowledge: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ExpandRequest(_message.Message):
    __slots__ = ("text", "entities", "knowledge")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    knowledge: str
    def __init__(self, text: _Optional[str] = ..., entities: _Optional[_Iterable[_Union[_common_pb2.Entity, _Mapping]]] = ..., knowledge: _Optional[str] = ...) -> None: ...

class ExpandResponse(_message.Message):
    __slots__ = ("entities", "model")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[_common_pb2.Entity]
    model: str
    def __init__(self, entities: _Optional[_Iterable[_Union[_common_pb2.Entity, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("image", "image_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.ImageRef
    image_id: str
    def __init__(self, image: _Optional[_Union[_common_pb2.ImageRef, _Mapping]] = ..., image_id: _Optional[str] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("description", "source", "model")
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    description: str
    source: str
    model: str
    def __init__(self, description: _Optional[str] = ..., source: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...
