"""Conversions between protobuf messages and the JSON dicts the Celery chain carries."""

from __future__ import annotations

from typing import Any

from riveg.v1 import common_pb2

ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")


def entity_to_proto(entity: dict[str, Any]) -> common_pb2.Entity:
    """A chain entity dict as an Entity message."""
    return common_pb2.Entity(
        text=entity["text"],
        start=int(entity["start"]),
        end=int(entity["end"]),
        type=entity["type"],
        expression=entity.get("expression") or "",
        score=float(entity.get("score") or 0.0),
    )


def entity_from_proto(message: common_pb2.Entity) -> dict[str, Any]:
    """An Entity message as a chain entity dict."""
    return {
        "text": message.text,
        "start": message.start,
        "end": message.end,
        "type": message.type,
        "expression": message.expression,
        "score": round(float(message.score), 6),
    }


def box_to_proto(box: list[float]) -> common_pb2.Box:
    """[x1, y1, x2, y2] as a Box message."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return common_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)


def box_from_proto(message: common_pb2.Box) -> list[float]:
    """A Box message as [x1, y1, x2, y2], rounded to 0.01 px."""
    return [round(float(v), 2) for v in (message.x1, message.y1, message.x2, message.y2)]


def image_ref(key: str, width: int, height: int) -> common_pb2.ImageRef:
    """An ImageRef for an object in the store."""
    return common_pb2.ImageRef(key=key, width=int(width), height=int(height))
