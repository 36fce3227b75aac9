"""Replay of the released ChatGPT knowledge: keyed by normalised post text, a miss is reported,
never invented; against the shared Twitter-GMNER data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from riveg.core.config import load_settings
from riveg.data.conll import shared_datasets_dir
from services.llm.backends import create_backend
from services.llm.replay import ReplayIndex, ReplayMiss, knowledge_files, normalise_text

GMNER_DEV = shared_datasets_dir() / "twitter_gmner" / "knowledge_chatgpt" / "dev.txt"
needs_data = pytest.mark.skipif(
    not GMNER_DEV.is_file(), reason=f"shared datasets absent ({GMNER_DEV} not found)"
)


def _write(path: Path, records: list[tuple[list[str], list[str]]]) -> Path:
    lines = []
    for tokens, knowledge in records:
        lines += [f"{t}\tO" for t in tokens] + ["<EOS>\tX"] + [f"{w}\tX" for w in knowledge] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_lookup_by_normalised_text_and_a_clear_miss(tmp_path: Path) -> None:
    tokens = ["RT", "@", "NASA", ":", "Launch", "of", "#", "Artemis", "today", "!"]
    index = ReplayIndex([_write(tmp_path / "k.txt", [(tokens, ["NASA", "is", "an", "agency."])])])
    assert index.lookup("RT @NASA: Launch of #Artemis today!") == "NASA is an agency."
    assert index.lookup("rt  @nasa : launch of # artemis TODAY !") == "NASA is an agency."
    with pytest.raises(ReplayMiss, match="no released ChatGPT knowledge for this post"):
        index.lookup("A post the release never saw")
    assert normalise_text("Hello ,  World") == "hello , world"


@needs_data
def test_gmner_dev_posts_replay_their_released_knowledge() -> None:
    from services.mner.data import load_split

    index = ReplayIndex(knowledge_files())
    posts = load_split("twitter_gmner", "dev")[:200]
    assert all(index.lookup(p.text) == " ".join(p.knowledge) for p in posts)


@needs_data
def test_replay_backend_answers_knowledge_and_refuses_expansion() -> None:
    backend = create_backend("replay", load_settings())
    backend.load()
    from services.mner.data import load_split

    post = load_split("twitter_gmner", "dev")[0]
    assert backend.knowledge(post.text) == " ".join(post.knowledge)
    assert backend.model == "chatgpt-replay@gpt-3.5-turbo"
    with pytest.raises(ReplayMiss):
        backend.knowledge("certainly not a tweet of any benchmark 1234")
    with pytest.raises(RuntimeError, match="RIVEG_LLM_EXPAND_BACKEND"):
        backend.expand(post.text, [{"text": "x", "type": "PER"}])
