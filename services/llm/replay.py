"""Replay of the released ChatGPT auxiliary knowledge (``<datasets>/*/knowledge_chatgpt/``).

The files hold each tweet's tokens, ``<EOS>`` and the knowledge gpt-3.5-turbo wrote for it. The
index is keyed by the normalised post text (words as the benchmarks tokenise them, joined by one
space, case-folded), so a raw post finds its tokenised record. A post the release lacks raises
:class:`ReplayMiss`; nothing is ever made up.
"""

from __future__ import annotations

import threading
import unicodedata
from pathlib import Path

from riveg.core.logging import get_logger
from riveg.core.storage import ObjectNotFound
from riveg.data.conll import read_knowledge, shared_datasets_dir, split_words

log = get_logger("services.llm.replay")


class ReplayMiss(ObjectNotFound):
    """The released data holds no knowledge for this post."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no released knowledge"


def normalise_text(text: str) -> str:
    """The replay key of a post: NFKC, benchmark word split, single spaces, case-folded."""
    words, _ = split_words(unicodedata.normalize("NFKC", text))
    return " ".join(words).casefold()


PREFERRED_DATASET = "twitter_gmner"


def knowledge_files(root: Path | None = None) -> list[Path]:
    """Every released knowledge file under the datasets folder, Twitter-GMNER's (the RiVEG
    release) first: GMNER reuses Twitter-2015/2017 tweets whose PGIM knowledge differs, and
    the first file holding a post wins."""
    base = root or shared_datasets_dir()
    files = base.glob("*/knowledge_chatgpt/*.txt")
    return sorted(files, key=lambda f: (f.parent.parent.name != PREFERRED_DATASET, str(f)))


class ReplayIndex:
    """normalised post text -> released knowledge paragraph, over all knowledge files."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.entries: dict[str, str] = {}
        for path in files:
            for tokens, knowledge in read_knowledge(path):
                if tokens and knowledge:
                    self.entries.setdefault(normalise_text(" ".join(tokens)), " ".join(knowledge))
        log.info("replay index loaded", files=len(files), posts=len(self.entries))

    @classmethod
    def from_datasets(cls, root: Path | None = None) -> ReplayIndex:
        """The index over ``<datasets>/*/knowledge_chatgpt/*.txt``; clear error when none."""
        files = knowledge_files(root)
        if not files:
            where = root or shared_datasets_dir()
            raise FileNotFoundError(
                f"no released knowledge files under {where}/*/knowledge_chatgpt/ "
                "(set RIVEG_DATASETS to the datasets folder)"
            )
        return cls(files)

    def lookup(self, text: str) -> str:
        """The released knowledge of the post; ReplayMiss when the release lacks it."""
        key = normalise_text(text)
        try:
            return self.entries[key]
        except KeyError:
            raise ReplayMiss(
                f"no released ChatGPT knowledge for this post ({len(self.entries)} posts indexed;"
                f" key {key[:60]!r})"
            ) from None

    def __contains__(self, text: str) -> bool:
        return normalise_text(text) in self.entries


_shared: ReplayIndex | None = None
_lock = threading.Lock()


def shared_index() -> ReplayIndex:
    """The process-wide index over the shared datasets (loaded once)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = ReplayIndex.from_datasets()
        return _shared
