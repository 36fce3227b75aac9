from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

DESCRIPTOR: _descriptor.FileDescriptor

class ImageRef(_message.Message):
    __slots__ = ("height", "key", "width")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    key: str
    width: int
    height: int
    def __init__(self, key: str | None = ..., width: int | None = ..., height: int | None = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("end", "expression", "score", "start", "text", "type")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    text: str
    start: int
    end: int
    type: str
    expression: str
    score: float
    def __init__(self, text: str | None = ..., start: int | None = ..., end: int | None = ..., type: str | None = ..., expression: str | None = ..., score: float | None = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "x2", "y1", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: float | None = ..., y1: float | None = ..., x2: float | None = ..., y2: float | None = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("height", "png_key", "rle_counts", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RLE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PNG_KEY_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    rle_counts: str
    png_key: str
    def __init__(self, height: int | None = ..., width: int | None = ..., rle_counts: str | None = ..., png_key: str | None = ...) -> None: ...

class CurrentModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CurrentModelResponse(_message.Message):
    __slots__ = ("backend", "model", "ready")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    model: str
    ready: bool
    backend: str
    def __init__(self, model: str | None = ..., ready: bool = ..., backend: str | None = ...) -> None: ...
