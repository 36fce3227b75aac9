"""Benchmark readers, in-context examples, MSEA and ``riveg mner eval`` on real data slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from riveg.data.captions import read_captions_mplug
from riveg.data.conll import shared_datasets_dir, split_words
from services.mner.data import LABEL_IDS, load_split, read_examples, split_paths

DATASETS = shared_datasets_dir()
needs_data = pytest.mark.skipif(
    not (DATASETS / "twitter2017").is_dir(), reason=f"shared datasets absent at {DATASETS}"
)


@needs_data
@pytest.mark.parametrize("dataset", ["twitter2015", "twitter2017", "twitter_gmner"])
def test_benchmark_dev_with_knowledge(dataset: str) -> None:
    posts = load_split(dataset, "dev")
    assert len(posts) in (723, 1000, 1500)
    assert all(tag in LABEL_IDS for p in posts for tag in p.tags)  # OTHER became MISC
    with_knowledge = sum(1 for p in posts if p.knowledge)
    assert with_knowledge >= len(posts) - 1  # the 2015 files lack the final tweet
    assert "<EOS>" not in posts[0].knowledge


@needs_data
def test_gmner_tokens_survive_serving_split() -> None:
    """The serving-time word splitter reproduces most CoNLL tokenisations of Twitter-GMNER."""
    posts = load_split("twitter_gmner", "dev", with_knowledge=False)
    same = sum(1 for p in posts if split_words(p.text)[0] == p.tokens)
    assert same / len(posts) > 0.9


@needs_data
def test_examples_and_captions() -> None:
    examples = read_examples("twitter2017")
    assert len(examples) >= 200
    first = examples[0]
    assert first.text and first.caption and first.annotation.startswith("Named entities")
    assert all(kind in ("PER", "LOC", "ORG", "MISC") for e in examples for _, kind in e.entities)
    _, knowledge = split_paths("twitter_gmner", "dev")
    captions = read_captions_mplug(knowledge.parents[1] / "captions_mplug_owl" / "dev.txt")
    assert len(captions) > 1000 and all(captions.values())
    with pytest.raises(ValueError):
        read_examples("twitter_gmner")


def _bag_of_words(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in embedder: hashed bag of lower-cased words, unit length."""
    out = torch.zeros((len(texts), 256))
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, hash(word) % 256] += 1.0
    return torch.nn.functional.normalize(out, dim=-1)


@needs_data
def test_msea_selects_nearest_and_caches(tmp_path: Path) -> None:
    from services.mner.msea import ExampleSelector, format_examples

    examples = read_examples("twitter2017")[:40]
    cache = tmp_path / "pool.pt"
    selector = ExampleSelector(examples, _bag_of_words, cache)
    target = examples[7]
    picked = selector.select(target.text, target.caption, n=3)
    assert picked[0].id == target.id and len(picked) == 3
    scores = [s for _, s in selector.scored(target.text, target.caption, n=3)]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0)
    assert cache.is_file()
    calls = []

    def counting(texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        return _bag_of_words(texts)

    ExampleSelector(examples, counting, cache).select("Paris", n=1)
    assert calls == [1]  # the pool came from the cache, only the query was embedded
    prompt = format_examples(picked)
    assert prompt.count("Text: ") == 3 and target.annotation in prompt


@needs_data
def test_msea_minilm_sentence_embeddings() -> None:
    from services.mner.msea import ExampleSelector, SentenceEmbedder

    embedder = SentenceEmbedder()
    examples = read_examples("twitter2017")[:12]
    selector = ExampleSelector(examples, embedder)
    assert selector.matrix.shape == (12, 384)
    assert torch.allclose(selector.matrix.norm(dim=-1), torch.ones(12), atol=1e-4)
    target = examples[3]
    assert selector.select(target.text + " !", target.caption, n=1)[0].id == target.id


@needs_data
def test_eval_cli_json_on_real_slice(tmp_path: Path) -> None:
    """``riveg mner eval --json`` with a tiny random model on 30 real dev posts."""
    from services.mner.cli import mner_group
    from services.mner.model import TaggerConfig, new_tagger, save_tagger
    from tests.test_mner_model import make_tiny_encoder

    data, knowledge = split_paths("twitter2017", "dev")
    blocks = data.read_text(encoding="utf-8").split("\n\n")[:30]
    small = tmp_path / "dev.txt"
    small.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    tagger, encoder = new_tagger(make_tiny_encoder(tmp_path / "enc"), TaggerConfig())
    model = save_tagger(tagger, encoder.tokenizer, tmp_path / "model")
    runner = CliRunner()
    for extra in ([], ["--knowledge", str(knowledge)]):
        result = runner.invoke(
            mner_group, ["eval", "--data", str(small), "--model", str(model), "--json", *extra]
        )
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout.strip().splitlines()[-1])
        assert payload["n_gold"] > 0 and 0.0 <= payload["f1"] <= 1.0
        assert 0.0 <= payload["precision"] <= 1.0 and 0.0 <= payload["recall"] <= 1.0
        assert set(payload["per_type"]) <= {"PER", "LOC", "ORG", "MISC"}
    bad = runner.invoke(mner_group, ["eval", "--data", str(small), "--model", str(tmp_path)])
    assert bad.exit_code != 0 and "not an MNER model folder" in bad.output
