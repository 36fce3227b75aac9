"""The encoder + CRF tagger on a tiny random BERT: encoding, training, save/load, backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from riveg.data.conll import Post, split_words
from services.mner.data import LABEL_IDS, LABELS, case_shape, normalise_label
from services.mner.model import TaggerConfig, WordEncoder, load_tagger, new_tagger, save_tagger
from services.mner.train import TrainOptions, make_batches, train

_VOCAB = "ted cruz speaks for me in paris with obama at the nba game apple google new york rt love"
WORDS = [
    *_VOCAB.split(),
    "this",
    "photo",
    "of",
    "my",
    "dog",
    "today",
    "!",
    ":",
    "@",
    "#",
    ".",
    ",",
    "'",
    "s",
]


def make_tiny_encoder(folder: Path) -> Path:
    """A random 2-layer BERT with a small word-level vocabulary, saved like a hub folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    return folder


POSTS = [
    Post("1", ["Ted", "Cruz", "in", "Paris", "!"], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
    Post("2", ["RT", "@", "Obama", ":", "love", "NBA"], ["O", "O", "B-PER", "O", "O", "B-ORG"]),
    Post("3", ["my", "dog", "in", "New", "York"], ["O", "O", "O", "B-LOC", "I-LOC"]),
    Post("4", ["Apple", "and", "Google", "today"], ["B-ORG", "O", "B-ORG", "O"]),
]
for _post in POSTS:
    _post.knowledge = ["Named", "entities", ":", "Ted", "Cruz", "(", "person", ")", "Paris"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny") / "encoder")


def test_labels_and_case_shapes() -> None:
    assert LABELS[0] == "O" and len(LABELS) == 9
    assert normalise_label("B-OTHER") == "B-MISC" and normalise_label("I-per") == "I-PER"
    with pytest.raises(ValueError):
        normalise_label("B-DATE")
    shapes = [case_shape(w) for w in ("obama", "Obama", "NBA", "iPhone", "2017", "!", "A")]
    assert shapes == [1, 2, 3, 4, 5, 6, 2]


def test_split_words_offsets() -> None:
    text = "RT @DrottM: Ted Cruz's #CruzCrew in U.S. http://t.co/x1 Hewlett-Packard"
    words, offsets = split_words(text)
    assert [text[a:b] for a, b in offsets] == words
    assert words[:4] == ["RT", "@", "DrottM", ":"]
    assert words[5:10] == ["Cruz", "'", "s", "#", "CruzCrew"]
    assert "http://t.co/x1" in words and "Hewlett-Packard" in words
    # already tokenised text splits back into the same words
    tokens = ["RT", "@", "DrottM", ":", "Ted", "Cruz", "speaks", "for", "me", "!"]
    assert split_words(" ".join(tokens))[0] == tokens


def test_word_without_subwords_maps_to_unk(encoder_dir: Path) -> None:
    _, encoder = new_tagger(encoder_dir, TaggerConfig())
    words = ["ted", "\ufe0f", "cruz"]
    encoded = encoder.encode(words, ["paris"])
    assert len(encoded["first"]) == 3
    ids = encoded["input_ids"]
    assert ids[encoded["first"][1]] == encoder.unk
    assert ids[0] == encoder.cls and ids.count(encoder.sep) == 2
    # knowledge tokens are type 1, never labelled
    assert encoded["token_type_ids"][-2] == 1 and max(encoded["first"]) < ids.index(encoder.sep)


def test_truncation_keeps_words_aligned(encoder_dir: Path) -> None:
    tagger, encoder = new_tagger(encoder_dir, TaggerConfig(max_length=8, knowledge_max=4))
    words = ["ted", "cruz", "speaks", "for", "me", "in", "paris", "with", "obama"]
    encoded = encoder.encode(words, ["paris"] * 10)
    assert len(encoded["input_ids"]) <= 8 and len(encoded["first"]) == 5
    from services.mner.evaluate import tag_words

    tags, conf = tag_words(tagger, encoder, [words], [["paris"] * 10])[0]
    assert len(tags) == len(words) == len(conf) and tags[-4:] == ["O"] * 4


def test_make_batches_cover_everything() -> None:
    import random

    batches = make_batches([5, 1, 9, 3, 7, 2, 8], 3, random.Random(0), bucket=2)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) <= 3 for b in batches)


def _batch(encoder: WordEncoder) -> dict[str, torch.Tensor]:
    labels = [[LABEL_IDS[t] for t in p.tags] for p in POSTS]
    return encoder.collate([encoder.encode(p.tokens, p.knowledge) for p in POSTS], labels)


def test_overfits_tiny_data(encoder_dir: Path) -> None:
    torch.manual_seed(0)
    tagger, encoder = new_tagger(encoder_dir, TaggerConfig(case="input", dropout=0.0))
    batch = _batch(encoder)
    optimizer = torch.optim.AdamW(tagger.parameters(), lr=5e-3)
    tagger.train()
    first = tagger.loss(batch).item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = tagger.loss(batch)
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4
    tagger.eval()
    predicted = [[LABELS[i] for i in path] for path, _ in tagger.predict(batch)]
    assert predicted == [p.tags for p in POSTS]


@pytest.mark.parametrize("case", ["input", "head", "none"])
def test_save_load_round_trip(encoder_dir: Path, tmp_path: Path, case: str) -> None:
    torch.manual_seed(1)
    tagger, encoder = new_tagger(encoder_dir, TaggerConfig(case=case))
    if tagger.case_embedding is not None:  # make the case path matter
        torch.nn.init.normal_(tagger.case_embedding.weight)
    tagger.eval()
    batch = _batch(encoder)
    before = tagger.emissions(batch)
    out = save_tagger(tagger, encoder.tokenizer, tmp_path / "model", fp16=False)
    loaded, loaded_encoder = load_tagger(out)
    assert loaded.config.case == case and not loaded.training
    after = loaded.emissions(_batch(loaded_encoder))
    assert torch.allclose(before, after, atol=1e-5)

    half = save_tagger(tagger, encoder.tokenizer, tmp_path / "half", fp16=True)
    from safetensors import safe_open

    with safe_open(str(half / "model.safetensors"), "pt") as handle:
        key = next(k for k in handle.keys() if "word_embeddings" in k)  # noqa: SIM118
        assert handle.get_tensor(key).dtype == torch.float16
    loaded_half, _ = load_tagger(half)
    assert torch.allclose(before, loaded_half.emissions(batch), atol=5e-2)
    if case == "input":
        quantized, _ = load_tagger(half, quantize=True)
        assert not any(type(m) is torch.nn.Linear for m in quantized.encoder.modules())
        assert quantized.emissions(batch).shape == before.shape


def test_load_rejects_non_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tagger(tmp_path)


def test_train_keeps_best_and_resumes(encoder_dir: Path, tmp_path: Path) -> None:
    options = TrainOptions(
        epochs=1, batch_size=2, lr=1e-3, head_lr=1e-2, knowledge_dropout=0.5, knowledge_noise=0.5
    )
    out = tmp_path / "run"
    summary = train(POSTS, POSTS, out, encoder_dir, TaggerConfig(), options)
    assert (out / "best" / "model.safetensors").is_file() and len(summary["history"]) == 1
    record = summary["history"][0]
    assert 0.0 <= record["dev_f1_without"] <= 1.0 and record["dev_f1_with"] is not None
    options.epochs = 2
    summary = train(POSTS, POSTS, out, encoder_dir, TaggerConfig(), options, resume=True)
    assert [r["epoch"] for r in summary["history"]] == [1, 2]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    options.epochs = 1
    again = train(
        POSTS,
        POSTS,
        tmp_path / "more",
        encoder_dir,
        TaggerConfig(),
        options,
        init_model=out / "best",
    )
    assert len(again["history"]) == 1
    saved = json.loads((tmp_path / "more" / "best" / "tagger.json").read_text())
    assert saved["extra"]["init_model"] == str(out / "best")


def test_crf_backend_character_spans(
    encoder_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from riveg.core.config import load_settings
    from riveg.serving.manager import ModelManager
    from services.mner.backends import MNER_BACKENDS, CrfMnerBackend

    tagger, encoder = new_tagger(encoder_dir, TaggerConfig())
    with torch.no_grad():  # force "B-PER" on every word: spans are then single words
        tagger.emission.bias.fill_(-10.0)
        tagger.emission.bias[LABEL_IDS["B-PER"]] = 10.0
        tagger.crf.transitions.zero_()
    model = save_tagger(tagger, encoder.tokenizer, tmp_path / "model")
    monkeypatch.setenv("RIVEG_MNER_MODEL", str(model))  # a folder: served by RIVEG_MNER_BACKEND
    backend = ModelManager.from_settings("mner", MNER_BACKENDS, load_settings()).current
    assert isinstance(backend, CrfMnerBackend) and backend.model_dir == model
    backend.load()
    assert backend.ready and backend.model.startswith("crf-")
    texts = ["RT @Obama:  Ted  Cruz!", "   "]
    result = backend.recognize(texts, ["Obama ( person )", None])
    assert result[1] == []
    entities = result[0]
    assert [e["text"] for e in entities] == ["RT", "@", "Obama", ":", "Ted", "Cruz", "!"]
    for e in entities:
        assert texts[0][e["start"] : e["end"]] == e["text"] and e["type"] == "PER"
        assert 0.0 <= e["score"] <= 1.0
    assert backend.recognize(["Ted"])[0][0]["start"] == 0


def test_word_encoder_collate_pads(encoder_dir: Path) -> None:
    _, encoder = new_tagger(encoder_dir, TaggerConfig())
    assert isinstance(encoder, WordEncoder)
    batch = encoder.collate([encoder.encode(["ted"]), encoder.encode(["ted", "cruz", "!"])])
    assert batch["word_mask"].tolist() == [[True, False, False], [True, True, True]]
    assert batch["attention_mask"].sum().item() == 3 + 5


def test_shipped_default_weights() -> None:
    """The committed default model: fp16, under 50 MB, loads offline and finds the obvious."""
    from services.mner.evaluate import tag_words
    from services.mner.model import default_model_dir

    folder = default_model_dir()
    missing = [
        name
        for name in ("model.safetensors", "tagger.json", "config.json", "tokenizer.json")
        if not (folder / name).is_file()
    ]
    if missing:  # committed in git: missing means the checkout or default_model_dir is broken
        pytest.fail(f"the shipped MNER weights are incomplete at {folder}: no {', '.join(missing)}")
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total < 50 * 1024 * 1024
    tagger, encoder = load_tagger(folder)
    assert tagger.config.labels == list(LABELS)
    words = ["Barack", "Obama", "visits", "Paris"]
    knowledge = [None, ["Barack", "Obama", "(person)"]]
    for tags, _ in tag_words(tagger, encoder, [words, words], knowledge):
        assert tags == ["B-PER", "I-PER", "O", "B-LOC"]


def test_cross_view_kl_pulls_only_the_student() -> None:
    from services.mner.model import cross_view_kl

    teacher = torch.randn(2, 4, 9, requires_grad=True)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    assert cross_view_kl(teacher.detach().clone(), teacher, mask).item() == pytest.approx(0.0)
    student = torch.randn(2, 5, 9, requires_grad=True)  # one word more: cut to the common words
    kl = cross_view_kl(student, teacher, mask)
    assert kl.item() > 0
    kl.backward()
    assert teacher.grad is None and student.grad is not None
    assert student.grad[1, 2:].abs().sum() == 0  # masked words give no gradient


def test_aligned_loss_is_both_views_plus_kl(encoder_dir: Path, tmp_path: Path) -> None:
    from services.mner.model import cross_view_kl
    from services.mner.train import aligned_loss

    tagger, encoder = new_tagger(encoder_dir, TaggerConfig(hints=True))
    tagger.eval()  # no dropout: the parts can be recomputed exactly
    labels = [[LABEL_IDS[t] for t in p.tags] for p in POSTS]
    with_k = encoder.collate([encoder.encode(p.tokens, p.knowledge) for p in POSTS], labels)
    text = [encoder.encode(p.tokens) for p in POSTS]
    plain = encoder.collate(text, labels)
    total = aligned_loss(tagger, with_k, encoder, text, labels, 0.5)
    a, b = tagger.emissions(with_k), tagger.emissions(plain)
    expected = (
        tagger.nll(a, with_k) + tagger.nll(b, plain) + 0.5 * cross_view_kl(b, a, plain["word_mask"])
    )
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    options = TrainOptions(epochs=1, batch_size=2, lr=1e-3, head_lr=1e-2, align=1.0)
    summary = train(POSTS, POSTS, tmp_path / "run", encoder_dir, TaggerConfig(), options)
    assert summary["history"][0]["dev_f1_with"] is not None
    saved = json.loads((tmp_path / "run" / "best" / "tagger.json").read_text())
    assert saved["extra"]["train"]["align"] == 1.0
    with pytest.raises(ValueError, match="align"):
        TrainOptions(align=-1.0)
