"""Knowledge hints: parsing the knowledge's entity list and the hint id of each post word."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.mner.hints import HINTS, description_type, listed_entities, word_hints
from services.mner.model import TaggerConfig, load_tagger, new_tagger, save_tagger
from services.mner.train import TrainOptions, train
from tests.test_mner_model import POSTS, make_tiny_encoder

KNOWLEDGE = [
    "Named",
    "entities:1.",
    "Kawhi",
    "Leonard",
    "(person/player)2.",
    "NBA",
    "(league/organization)3.",
    "Block",
    "of",
    "the",
    "Year",
    "(award/title)4.",
    "#NBAAwards",
    "(event/award",
    "ceremony)Reasoning:",
    "The",
    "sentence",
    "mentions",
    "2.",
    "things",
]


def _names(words: list[str], knowledge: list[str] | None) -> list[str]:
    return [HINTS[h] for h in word_hints(words, knowledge)]


def test_listed_entities_are_parsed_with_types() -> None:
    assert listed_entities(KNOWLEDGE) == [
        (["kawhi", "leonard"], "PER"),
        (["nba"], "ORG"),
        (["block", "of", "the", "year"], "MISC"),
        (["nbaawards"], "MISC"),
    ]
    assert listed_entities(["Named", "entities:", "None.", "Reasoning:", "1.", "no"]) == []
    assert description_type("city in Texas") == "LOC" and description_type("a movie") == "MISC"


def test_word_hints_mark_listed_names() -> None:
    words = [
        "#",
        "NBA",
        ":",
        "Kawhi",
        "Leonard",
        "wins",
        "Block",
        "of",
        "the",
        "Year",
        "!",
        "#",
        "NBAAwards",
    ]
    assert _names(words, KNOWLEDGE) == [
        "unlisted", "B-ORG", "unlisted", "B-PER", "I-PER", "unlisted",
        "B-MISC", "I-MISC", "I-MISC", "I-MISC", "unlisted", "unlisted", "B-MISC",
    ]  # fmt: skip
    assert _names(words, None) == ["no_knowledge"] * len(words)
    assert _names(["the", "year"], KNOWLEDGE) == ["unlisted", "unlisted"]  # whole names only


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny") / "encoder")


def test_hints_change_the_emissions_and_survive_save_load(encoder_dir: Path, tmp_path: Path):
    torch.manual_seed(2)
    tagger, encoder = new_tagger(encoder_dir, TaggerConfig(hints=True))
    torch.nn.init.normal_(tagger.hint_embedding.weight)
    tagger.eval()
    post = POSTS[0]
    knowledge = ["Named", "entities:", "1.", "Ted", "Cruz", "(politician)", "2.", "Paris", "(city)"]
    encoded = encoder.encode(post.tokens, knowledge)
    first = encoded["first"]
    assert [HINTS[encoded["hint_ids"][i]] for i in first] == [
        "B-PER", "I-PER", "unlisted", "B-LOC", "unlisted",
    ]  # fmt: skip
    assert len(encoded["hint_ids"]) == len(encoded["input_ids"])
    with_hints = tagger.emissions(encoder.collate([encoded]))
    encoder.hints = False
    without = tagger.emissions(encoder.collate([encoder.encode(post.tokens, knowledge)]))
    assert not torch.allclose(with_hints, without)
    encoder.hints = True
    out = save_tagger(tagger, encoder.tokenizer, tmp_path / "model", fp16=False)
    loaded, loaded_encoder = load_tagger(out)
    assert loaded.config.hints and loaded_encoder.hints
    batch = loaded_encoder.collate([loaded_encoder.encode(post.tokens, knowledge)])
    again = loaded.emissions(batch)
    assert torch.allclose(with_hints, again, atol=1e-5)


def test_continued_training_can_add_hints(encoder_dir: Path, tmp_path: Path) -> None:
    options = TrainOptions(epochs=1, batch_size=2, lr=1e-3, head_lr=1e-2)
    train(POSTS, POSTS, tmp_path / "plain", encoder_dir, TaggerConfig(), options)
    train(POSTS, POSTS, tmp_path / "hinted", encoder_dir, TaggerConfig(hints=True), options,
          init_model=tmp_path / "plain" / "best")  # fmt: skip
    tagger, encoder = load_tagger(tmp_path / "hinted" / "best")
    assert tagger.config.hints and tagger.hint_embedding is not None and encoder.hints


def test_average_of_two_models_is_their_mean(encoder_dir: Path, tmp_path: Path) -> None:
    """`riveg mner average`: the soup's weights are the mean; wrong inputs fail clearly."""
    from click.testing import CliRunner

    from services.mner.cli import mner_group

    folders = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        tagger, encoder = new_tagger(encoder_dir, TaggerConfig(hints=True))
        torch.nn.init.normal_(tagger.hint_embedding.weight)
        folders.append(save_tagger(tagger, encoder.tokenizer, tmp_path / f"m{seed}", fp16=False))
    result = CliRunner().invoke(
        mner_group, ["average", *map(str, folders), "--out", str(tmp_path / "soup")]
    )
    assert result.exit_code == 0, result.output
    soup, _ = load_tagger(tmp_path / "soup")
    first, second = (load_tagger(f)[0].state_dict() for f in folders)
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (first[key] + second[key]) / 2, atol=2e-3), key
    assert soup.config.extra["averaged"] == [str(f) for f in folders]
    plain = save_tagger(*_plain(encoder_dir), tmp_path / "plain", fp16=False)
    refused = CliRunner().invoke(mner_group, ["average", str(plain), str(folders[0]), "--out",
                                              str(tmp_path / "bad")])  # fmt: skip
    assert refused.exit_code == 1 and "not the same architecture" in refused.output


def _plain(encoder_dir: Path):
    tagger, encoder = new_tagger(encoder_dir, TaggerConfig(case="none"))
    return tagger, encoder.tokenizer
