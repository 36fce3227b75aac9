"""Prompts (MSEA knowledge prompt, fixed few-shot expansion), referring expressions, the cache
keys, image descriptions (detector, released captions) and the per-job backend routing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from riveg.core.config import load_settings
from riveg.core.storage import LocalObjectStore
from riveg.data.conll import shared_datasets_dir
from riveg.sample import SAMPLE_IMAGE
from services.llm.backends import (
    LlmRouter,
    clean_description,
    create_backend,
    description_settled,
    referring_expression,
    split_template,
)
from services.llm.cache import GenerationCache, request_hash
from services.llm.describe import CaptionIndex, DetectorDescriber, people_phrase

ANNOTATIONS = shared_datasets_dir() / "twitter2017" / "manual_annotations" / "2017train.txt"
GMNER_CAPTIONS = shared_datasets_dir() / "twitter_gmner" / "captions_mplug_owl" / "dev.txt"


def test_referring_expression_and_description_cleaning() -> None:
    assert referring_expression("NASA", "ORG", "a space agency") == "NASA(ORG)-a space agency"
    assert referring_expression("NASA", "ORG", "") == "NASA(ORG)"
    assert clean_description('  "a space agency."\nText: more') == "a space agency"


@pytest.mark.parametrize(
    "full",
    [
        " a politician\nText: more",
        ' "a group of people who have served in the military for years."',
        " a b c d e f g h. . more words here",
        " a b c d e f g h , , ,",
        " one two three four five six seven eight nine ten eleven twelve",
        '" " a b c d e f g h i',  # leading words that the cleaning strips away
    ],
)
def test_a_generation_cut_once_settled_cleans_to_the_same_description(full: str) -> None:
    """The expansion decoding stops a sequence once ``description_settled``: what it would have
    generated next can no longer change the cleaned description."""
    for end in range(len(full) + 1):
        if description_settled(full[:end]):
            assert clean_description(full[:end]) == clean_description(full), full[:end]


def test_settled_holds_for_random_generations() -> None:
    """The same property on random strings of words, quotes, dots, spaces and newlines."""
    rng = random.Random(7)
    pieces = ["a", "bb", "c.", '"', "'", ".", ",", " ", " ", "  ", "\n", "\t", ";x", "word"]
    for _ in range(400):
        full = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
        for end in range(len(full) + 1):
            if description_settled(full[:end]):
                assert clean_description(full[:end]) == clean_description(full), repr(full)


def test_the_expansion_template_splits_into_examples_post_and_question() -> None:
    backend = create_backend("openai", load_settings(llm_api_model="m"))
    examples, post, question = split_template(backend.expand_template)
    assert examples + post + question == backend.expand_template
    assert "{" not in examples and post.startswith("{background}Text:")
    assert question.startswith("Question:") and "{entity}" in question
    segments = backend.expand_segments("NASA rocket", [{"text": "NASA"}, {"text": "rocket"}])
    assert [s[:2] for s in segments] == [segments[0][:2]] * 2  # examples and post are shared
    assert ["".join(s) for s in segments] == backend.expand_prompts(
        "NASA rocket", [{"text": "NASA"}, {"text": "rocket"}]
    )


def test_expansion_prompt_is_the_fixed_few_shot_prompt() -> None:
    backend = create_backend("openai", load_settings(llm_api_model="m"))
    [prompt] = backend.expand_prompts("NASA rocket", [{"text": "NASA"}], "NASA is an agency.")
    assert prompt.count("Question: Briefly, what is the") == 4
    assert prompt.endswith(
        "Background: NASA is an agency.\nText: NASA rocket\n"
        "Question: Briefly, what is the NASA in the Text?\nAnswer:"
    )


@pytest.mark.skipif(not ANNOTATIONS.is_file(), reason=f"manual annotations absent ({ANNOTATIONS})")
def test_knowledge_prompt_holds_the_five_most_similar_annotated_examples() -> None:
    backend = create_backend("openai", load_settings(llm_api_model="m"))
    text = "Kevin Durant and the Warriors beat the Cavaliers in the NBA Finals"
    prompt = backend.knowledge_prompt(text, "a basketball player on the court")
    assert prompt.startswith("Here are some posts from Twitter")
    assert prompt.count("\nQuestion: Which named entities") == 6  # 5 examples + the post
    assert prompt.count("Answer: Named entities") >= 3
    assert prompt.endswith(f"Text: {text}\nImage: a basketball player on the court\n"
                           "Question: Which named entities does the text mention, and what are "
                           "they?\nAnswer:")  # fmt: skip
    first_example = prompt.split("Text: ", 2)[1]
    assert any(w in first_example for w in ("NBA", "Warriors", "Cavs", "Cavaliers", "Durant"))


def test_cache_keys_separate_backend_model_and_request(tmp_path: Path) -> None:
    cache = GenerationCache(LocalObjectStore(tmp_path))
    digest = request_hash("prompt", max_new_tokens=4, stop=["\n"])
    assert digest != request_hash("prompt", max_new_tokens=5, stop=["\n"])
    assert cache.get("gemma", "g@1", digest) is None
    cache.put("gemma", "g@1", digest, "an answer")
    assert cache.get("gemma", "g@1", digest) == "an answer"
    assert cache.get("openai", "g@1", digest) is None and cache.get("gemma", "g@2", digest) is None
    assert (cache.hits, cache.misses) == (1, 3)


def test_people_phrases() -> None:
    assert people_phrase(0, 0.0) == "a photo with no person visible"
    assert people_phrase(1, 0.1) == "a photo of one person"
    assert people_phrase(1, 0.6) == "a close-up photo of one person"
    assert people_phrase(3, 0.2) == "a photo of three people"
    assert people_phrase(9, 0.2) == "a photo of several people"


def test_offline_description_of_the_sample_comes_from_the_detector() -> None:
    described = DetectorDescriber().describe(SAMPLE_IMAGE.read_bytes())
    assert described.source == "detector"
    assert described.text in ("a photo of one person", "a close-up photo of one person")


@pytest.mark.skipif(not GMNER_CAPTIONS.is_file(), reason=f"captions absent ({GMNER_CAPTIONS})")
def test_released_captions_by_image_id() -> None:
    captions = CaptionIndex()
    assert "Ted Cruz" in captions.get("1768609.jpg")
    assert captions.get("no-such-image") is None


def test_router_hosts_one_backend_per_name_and_job(tmp_path: Path) -> None:
    settings = load_settings(
        llm_backend="openai", llm_expand_backend="gemma", llm_api_model="m", store_path=tmp_path
    )
    router = LlmRouter(settings, LocalObjectStore(tmp_path))
    assert router.for_job("knowledge").key == "openai" and router.for_job("expand").key == "gemma"
    assert router.backend_name == "knowledge=openai,expand=gemma"
    assert router.for_job("expand").cache is not None
    same = LlmRouter(load_settings(llm_backend="openai", llm_api_model="m"))
    assert same.for_job("knowledge") is same.for_job("expand") and same.backend_name == "openai"


def test_without_annotations_the_knowledge_prompt_is_the_fixed_one_shot(tmp_path, monkeypatch):
    monkeypatch.setenv("RIVEG_DATASETS", str(tmp_path / "no-datasets"))
    backend = create_backend("openai", load_settings(llm_api_model="m"))
    prompt = backend.knowledge_prompt("NASA launches a rocket", "")
    assert prompt.count("\nQuestion: Which named entities") == 2  # the fixed example + the post
    assert "Kevin Durant enters Oracle Arena" in prompt
    assert prompt.endswith("Text: NASA launches a rocket\nImage: not described\n"
                           "Question: Which named entities does the text mention, and what are "
                           "they?\nAnswer:")  # fmt: skip
