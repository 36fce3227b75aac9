"""The ``crf`` MNER backend: the PLIM-style encoder + CRF model of :mod:`riveg.mner`.

Raw post text is split into words with character offsets (:func:`riveg.mner.data.split_words`,
the Twitter-GMNER tokenisation), tagged with the optional knowledge appended, and entities are
returned as character spans of the raw text. The model folder is ``RIVEG_MNER_MODEL`` (or a
``mner_model`` setting) when set, else the shipped weights in ``services/mner/weights``;
``RIVEG_MNER_QUANTIZE=1`` runs the encoder in dynamic int8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from riveg.data.conll import bio_spans
from services.mner.backends import MNER_BACKENDS, MnerBackend


def model_dir_for(settings: Any) -> Path:
    """The model folder this backend loads."""
    from riveg.mner.model import default_model_dir

    return Path(settings.mner_model) if settings.mner_model else default_model_dir()


def quantize_for(settings: Any) -> bool:
    """Whether to run the encoder in dynamic int8 (``RIVEG_MNER_QUANTIZE=1``)."""
    return bool(settings.mner_quantize)


@MNER_BACKENDS.register("crf")
class CrfMnerBackend(MnerBackend):
    """Encoder + CRF over the post and (when given) LLM knowledge; ``score`` is the mean
    per-word probability of the entity's labels."""

    name = "crf-minilm"
    version = "1"
    batch_size = 64

    def _load(self) -> None:
        import torch

        from riveg.mner.model import load_tagger

        if self.settings.torch_threads and self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)
        folder = model_dir_for(self.settings)
        self.tagger, self.encoder = load_tagger(folder, quantize=quantize_for(self.settings))
        encoder_name = self.tagger.config.encoder_name or "encoder"
        self.name = f"crf-{encoder_name}"
        self.version = str(self.tagger.config.extra.get("version", "1"))
        self.recognize(["Warm up in Paris ."])

    def recognize(
        self, texts: list[str], knowledge: list[str | None] | None = None
    ) -> list[list[dict[str, Any]]]:
        from riveg.mner.data import split_knowledge, split_words
        from riveg.mner.evaluate import tag_words

        if knowledge is not None and len(knowledge) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(knowledge)} knowledge entries")
        split = [split_words(text) for text in texts]
        know = [split_knowledge(k) for k in (knowledge or [None] * len(texts))]
        tagged = tag_words(self.tagger, self.encoder, [w for w, _ in split], know, self.batch_size)
        results = []
        for text, (_, offsets), (tags, conf) in zip(texts, split, tagged, strict=True):
            entities = []
            for first, last, kind in bio_spans(tags):
                start, end = offsets[first][0], offsets[last - 1][1]
                entities.append(
                    {
                        "text": text[start:end],
                        "start": start,
                        "end": end,
                        "type": kind,
                        "score": sum(conf[first:last]) / (last - first),
                    }
                )
            results.append(entities)
        return results
