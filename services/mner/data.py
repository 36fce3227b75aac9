"""Benchmark splits, in-context examples and the knowledge words of MNER.

The CoNLL readers themselves live in :mod:`riveg.data.conll`; this module names the benchmark
files, the BIO label set over PER/LOC/ORG/MISC and the case-shape feature given to the
(lower-casing) encoder.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from riveg.data.captions import read_captions_blip2
from riveg.data.conll import Post, attach_knowledge, read_conll, shared_datasets_dir

ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")
LABELS = ("O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")))
LABEL_IDS = {label: index for index, label in enumerate(LABELS)}

# dataset name -> (folder, {split: file name})
BENCHMARKS: dict[str, tuple[str, dict[str, str]]] = {
    "twitter2015": ("twitter2015", {"train": "train.txt", "dev": "valid.txt"}),
    "twitter2017": ("twitter2017", {"train": "train.txt", "dev": "valid.txt"}),
    "twitter_gmner": ("twitter_gmner", {"train": "train.txt", "dev": "dev.txt"}),
}


def normalise_label(tag: str) -> str:
    """A dataset BIO tag onto :data:`LABELS` (OTHER -> MISC); unknown tags raise ValueError."""
    if tag == "O":
        return tag
    prefix, _, kind = tag.partition("-")
    kind = "MISC" if kind.upper() in ("OTHER", "MISC") else kind.upper()
    label = f"{prefix}-{kind}"
    if label not in LABEL_IDS:
        raise ValueError(f"unknown BIO tag {tag!r}")
    return label


def split_paths(dataset: str, split: str, root: Path | None = None) -> tuple[Path, Path]:
    """(CoNLL file, knowledge file) of a benchmark split (``train`` or ``dev``)."""
    if dataset not in BENCHMARKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(BENCHMARKS)}")
    folder, files = BENCHMARKS[dataset]
    if split not in files:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(files)}")
    base = (root or shared_datasets_dir()) / folder
    return base / files[split], base / "knowledge_chatgpt" / files[split]


def load_posts(path: str | Path, knowledge: str | Path | None = None) -> list[Post]:
    """Posts of a CoNLL file with normalised tags, knowledge attached when a file is given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    posts = read_conll(path)
    for post in posts:
        post.tags = [normalise_label(tag) for tag in post.tags]
    if knowledge is not None:
        knowledge = Path(knowledge)
        if not knowledge.is_file():
            raise FileNotFoundError(f"no such knowledge file: {knowledge}")
        attach_knowledge(posts, knowledge)
    return posts


def load_split(dataset: str, split: str, with_knowledge: bool = True) -> list[Post]:
    """A benchmark split, with its ChatGPT knowledge attached when asked."""
    data, knowledge = split_paths(dataset, split)
    return load_posts(data, knowledge if with_knowledge else None)


# --- case shape: the uncased encoder gets casing back through a small embedding per word ---

CASE_SHAPES = ("pad", "lower", "title", "upper", "mixed", "digit", "other")


def case_shape(word: str) -> int:
    """Index into :data:`CASE_SHAPES` of a word's letter casing."""
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return 5 if any(c.isdigit() for c in word) else 6
    if all(c.islower() for c in letters):
        return 1
    if all(c.isupper() for c in letters):
        return 2 if len(letters) == 1 else 3
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 2
    return 4


# --- serving time: knowledge text -> words ---


def split_knowledge(text: str | None) -> list[str]:
    """Knowledge text as words (whitespace split, as in the knowledge files)."""
    return text.split() if text else []


# --- in-context examples (MSEA pool) and image descriptions ---


@dataclass
class Example:
    """A hand-annotated in-context example: post, image description, entities and reasoning."""

    id: str
    text: str
    caption: str
    annotation: str
    entities: list[tuple[str, str]]


def _read_id_blocks(path: Path) -> dict[str, str]:
    """``id`` line followed by free text lines, until the next id line (ids have no spaces)."""
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            line = raw.strip()
            if not line:
                continue
            if " " not in line and not line.startswith(("[", "Named", "None")):
                current = line
                blocks.setdefault(current, [])
            elif current is not None:
                blocks[current].append(line)
    return {key: " ".join(value) for key, value in blocks.items()}


def _parse_entities(text: str) -> list[tuple[str, str]]:
    if not text or text.strip() == "None":
        return []
    try:
        value = ast.literal_eval(f"[{text}]")
    except (ValueError, SyntaxError):
        return []
    return [(str(name), "MISC" if kind in ("OTHER", "MISC") else str(kind)) for name, kind in value]


def read_examples(dataset: str = "twitter2017", root: Path | None = None) -> list[Example]:
    """The hand-annotated in-context examples of twitter2015/2017 with post text and caption."""
    if dataset not in ("twitter2015", "twitter2017"):
        raise ValueError("in-context examples exist for twitter2015 and twitter2017 only")
    base = (root or shared_datasets_dir()) / dataset
    year = dataset[-4:]
    annotations = _read_id_blocks(base / "manual_annotations" / f"{year}train.txt")
    entity_lists = _read_id_blocks(base / "manual_annotations" / f"{year}train_GPT.txt")
    captions = read_captions_blip2(base / "captions_blip2.txt")
    texts = {post.id: post.text for post in read_conll(base / "train.txt")}
    examples = []
    for image_id, annotation in annotations.items():
        if image_id not in texts:
            continue
        examples.append(
            Example(
                id=image_id,
                text=texts[image_id],
                caption=captions.get(image_id, ""),
                annotation=annotation,
                entities=_parse_entities(entity_lists.get(image_id, "")),
            )
        )
    return examples
