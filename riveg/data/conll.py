"""CoNLL readers for Twitter-2015/2017, Twitter-GMNER and the sentence-aligned knowledge files.

Types are normalised to PER/LOC/ORG/MISC (OTHER and MISC are one class, output as MISC).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TYPE_ALIASES = {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "MISC": "MISC", "OTHER": "MISC"}
KNOWLEDGE_SEPARATOR = "<EOS>"


def shared_datasets_dir() -> Path:
    """The datasets folder: $RIVEG_DATASETS, else ../shared/datasets beside the repository."""
    env = os.environ.get("RIVEG_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def normalise_type(tag_type: str) -> str:
    """Map a dataset's entity type onto PER/LOC/ORG/MISC."""
    try:
        return TYPE_ALIASES[tag_type.upper()]
    except KeyError:
        raise ValueError(f"unknown entity type {tag_type!r}") from None


@dataclass
class Post:
    """One tweet: its image id (empty when the file has none), tokens and BIO tags."""

    id: str
    tokens: list[str]
    tags: list[str]
    knowledge: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The tokens joined by single spaces (the character offsets' reference)."""
        return " ".join(self.tokens)

    def token_offsets(self) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token in ``text``."""
        offsets, position = [], 0
        for token in self.tokens:
            offsets.append((position, position + len(token)))
            position += len(token) + 1
        return offsets

    def token_spans(self) -> list[tuple[int, int, str]]:
        """Gold entities as (first token, last token + 1, type)."""
        return bio_spans(self.tags)

    def entities(self) -> list[dict]:
        """Gold entities as dicts with text, character start/end and type."""
        offsets = self.token_offsets()
        return [
            {
                "text": " ".join(self.tokens[a:b]),
                "start": offsets[a][0],
                "end": offsets[b - 1][1],
                "type": kind,
            }
            for a, b, kind in self.token_spans()
        ]


def bio_spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Token spans (start, end_exclusive, type) of BIO tags; an I- after O or another type opens
    a new entity (the conlleval convention)."""
    spans: list[tuple[int, int, str]] = []
    start, kind = None, None
    for index, tag in enumerate([*tags, "O"]):
        prefix, _, raw_type = tag.partition("-")
        tag_type = normalise_type(raw_type) if raw_type else None
        continues = prefix == "I" and kind == tag_type and start is not None
        if start is not None and not continues:
            spans.append((start, index, kind))  # type: ignore[arg-type]
            start, kind = None, None
        if prefix in ("B", "I") and not continues:
            start, kind = index, tag_type
    return spans


def _blocks(path: Path) -> Iterator[list[str]]:
    block: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if not line.strip():
                if block:
                    yield block
                block = []
            else:
                block.append(line)
    if block:
        yield block


def _split(line: str) -> tuple[str, str]:
    token, _, tag = line.rpartition("\t")
    if not _:
        token, _, tag = line.rpartition(" ")
    return token, tag.strip()


def read_conll(path: str | Path) -> list[Post]:
    """Posts of a CoNLL file; ``IMGID:`` lines give the id (else the post's index)."""
    posts: list[Post] = []
    for block in _blocks(Path(path)):
        post_id = ""
        if block[0].startswith("IMGID:"):
            post_id = block[0][len("IMGID:") :].strip()
            block = block[1:]
        if not block:
            continue
        pairs = [_split(line) for line in block]
        posts.append(Post(post_id or str(len(posts)), [t for t, _ in pairs], [g for _, g in pairs]))
    return posts


def read_knowledge(path: str | Path) -> list[tuple[list[str], list[str]]]:
    """Sentence-aligned knowledge: (post tokens, knowledge tokens) per post, in file order."""
    records = []
    for block in _blocks(Path(path)):
        tokens = [_split(line)[0] for line in block if not line.startswith("IMGID:")]
        if KNOWLEDGE_SEPARATOR in tokens:
            cut = tokens.index(KNOWLEDGE_SEPARATOR)
            records.append((tokens[:cut], tokens[cut + 1 :]))
        else:
            records.append((tokens, []))
    return records


def attach_knowledge(posts: list[Post], path: str | Path) -> int:
    """Fill ``post.knowledge`` from a sentence-aligned file, matching by tokens in order;
    posts the file lacks keep no knowledge. Returns how many posts got knowledge."""
    records = read_knowledge(path)
    matched, cursor = 0, 0
    for post in posts:
        for probe in range(cursor, min(cursor + 3, len(records))):
            if records[probe][0] == post.tokens:
                post.knowledge = records[probe][1]
                matched += 1
                cursor = probe + 1
                break
    return matched


_WORD_RE = re.compile(r"https?://\S+|&\w+|\w+(?:[-./]\w+)*|[^\w\s]")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of a raw post and their (start, end) character offsets.

    Follows the Twitter-GMNER/2017 tokenisation: ``@`` and ``#`` are split from handles and
    hashtags, punctuation and apostrophes are words of their own, hyphenated words, numbers
    and URLs stay whole. Text that is already tokenised (words joined by spaces) mostly
    splits back into the same words.
    """
    words, offsets = [], []
    for match in _WORD_RE.finditer(text):
        words.append(match.group())
        offsets.append((match.start(), match.end()))
    return words, offsets
