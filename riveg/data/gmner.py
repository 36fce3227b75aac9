"""Twitter-GMNER gold: the CoNLL posts plus the Pascal-VOC xml boxes of their images.

Each xml ``<object>`` has a ``<name>`` equal to an entity's tokens joined by single spaces and a
``<bndbox>`` in pixels; several objects with one name are several boxes of that entity. An entity
with no object, or a post whose image has no xml file, is not groundable (``boxes`` is None).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from riveg.data.conll import Post, read_conll

Box = tuple[float, float, float, float]


@dataclass
class ImageBoxes:
    """The boxes of one image's xml file, grouped by entity name, and the image size."""

    width: int
    height: int
    boxes: dict[str, list[Box]] = field(default_factory=dict)


@dataclass
class GoldEntity:
    """A gold entity: character span in ``Post.text``, surface text, type and its boxes."""

    start: int
    end: int
    text: str
    type: str
    boxes: list[Box] | None


@dataclass
class GroundedPost:
    """A Twitter-GMNER post with its gold entities (boxes attached) and image size if known."""

    post: Post
    entities: list[GoldEntity]
    image: ImageBoxes | None

    @property
    def id(self) -> str:
        return self.post.id

    @property
    def text(self) -> str:
        return self.post.text


def read_voc_xml(path: str | Path) -> ImageBoxes:
    """Read one Pascal-VOC xml file; ValueError when it is malformed."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid xml ({exc})") from exc

    def number(node: ET.Element, tag: str) -> float:
        child = node.find(tag)
        if child is None or child.text is None:
            raise ValueError(f"{path}: <{tag}> is missing")
        try:
            return float(child.text.strip())
        except ValueError:
            raise ValueError(f"{path}: <{tag}> is not a number: {child.text!r}") from None

    size = root.find("size")
    width = int(number(size, "width")) if size is not None else 0
    height = int(number(size, "height")) if size is not None else 0
    boxes: dict[str, list[Box]] = {}
    for obj in root.findall("object"):
        name_node, bndbox = obj.find("name"), obj.find("bndbox")
        if name_node is None or name_node.text is None or bndbox is None:
            raise ValueError(f"{path}: an <object> lacks <name> or <bndbox>")
        box = tuple(number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.setdefault(name_node.text.strip(), []).append(box)  # type: ignore[arg-type]
    return ImageBoxes(width, height, boxes)


def read_image_boxes(xml_dir: str | Path, image_id: str) -> ImageBoxes | None:
    """The boxes of ``<xml_dir>/<image_id>.xml``, or None when the image has no xml file."""
    path = Path(xml_dir) / f"{image_id}.xml"
    return read_voc_xml(path) if path.is_file() else None


def ground_post(post: Post, image: ImageBoxes | None) -> GroundedPost:
    """Attach the boxes of ``image`` to the post's gold entities by entity name."""
    entities = []
    for entity in post.entities():
        boxes = image.boxes.get(entity["text"]) if image is not None else None
        entities.append(
            GoldEntity(
                entity["start"],
                entity["end"],
                entity["text"],
                entity["type"],
                list(boxes) if boxes else None,
            )
        )
    return GroundedPost(post, entities, image)


def read_gmner(conll_path: str | Path, xml_dir: str | Path) -> list[GroundedPost]:
    """Posts of a Twitter-GMNER CoNLL file with the boxes of ``xml_dir`` attached."""
    xml_dir = Path(xml_dir)
    if not xml_dir.is_dir():
        raise FileNotFoundError(f"xml folder not found: {xml_dir}")
    return [
        ground_post(post, read_image_boxes(xml_dir, post.id)) for post in read_conll(conll_path)
    ]
