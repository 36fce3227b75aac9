"""Knowledge hints: which post words the LLM knowledge lists as named entities, and as what.

The auxiliary knowledge usually starts with a numbered list (``Named entities: 1. Kawhi
Leonard (person/player) 2. NBA (league/organization) Reasoning: ...``). A small encoder does
not reliably line those names up with the post by attention alone, so each post word also gets
a hint id: the knowledge is absent, the word is not listed, or it begins / continues a listed
name whose description reads as PER, LOC, ORG or MISC. The tagger adds a learned embedding of
the hint to the word's input embeddings (``TaggerConfig.hints``); the CRF still decides.
"""

from __future__ import annotations

import re

from riveg.data.conll import split_words
from services.mner.data import ENTITY_TYPES

# hint ids: 0 = special token or knowledge subword, 1 = post without knowledge,
# 2 = word not in the knowledge's list, then B-/I- of each type the description suggests
HINTS = ("pad", "no_knowledge", "unlisted", *(f"{p}-{t}" for t in ENTITY_TYPES for p in "BI"))
HINT_IDS = {name: index for index, name in enumerate(HINTS)}

# words of a listed name's description that suggest its type (the first type matched wins)
_TYPE_WORDS = {
    "PER": (
        "person people player singer actor actress athlete politician artist musician "
        "footballer rapper president celebrity author character member coach journalist "
        "comedian individual user handle dj host wrestler"
    ),
    "ORG": (
        "organization organisation company team club band league university school brand "
        "group party network agency government corporation channel station magazine "
        "newspaper institution association federation business store restaurant"
    ),
    "LOC": (
        "location city country place state region town island river mountain area continent "
        "neighborhood neighbourhood venue stadium arena street park landmark county province"
    ),
}
_TYPE_PATTERNS = [
    (kind, re.compile(r"\b(?:" + "|".join(words.split()) + r")"))
    for kind, words in _TYPE_WORDS.items()
]
_NUMBER = re.compile(r"(?<![\w.])(\d{1,2})\.(?!\d)")
_NAME_AND_DESCRIPTION = re.compile(r"(.+?)\s*[(\-–:]\s*(.*)")


def description_type(description: str) -> str:
    """PER, LOC, ORG or MISC, from the words of a listed name's description."""
    text = description.lower()
    for kind, pattern in _TYPE_PATTERNS:
        if pattern.search(text):
            return kind
    return "MISC"


def _normalise(word: str) -> str:
    return word.lower().lstrip("#@")


def listed_entities(knowledge: list[str]) -> list[tuple[list[str], str]]:
    """(normalised words, type) of each name in the knowledge's numbered entity list."""
    text = " ".join(knowledge).split("Reasoning")[0]
    parts = _NUMBER.split(" " + text)
    entities = []
    for part in parts[2::2]:  # split keeps the numbers at odd places
        part = part.strip()
        if not part:
            continue
        match = _NAME_AND_DESCRIPTION.match(part)
        name, description = (match.group(1), match.group(2)) if match else (part, "")
        words = [_normalise(w) for w in split_words(name)[0] if w not in ("#", "@")]
        words = [w for w in words if w]
        if words:
            entities.append((words, description_type(description)))
    return entities


def word_hints(words: list[str], knowledge: list[str] | None) -> list[int]:
    """One hint id per post word (longest listed names matched first, no overlaps)."""
    if not knowledge:
        return [HINT_IDS["no_knowledge"]] * len(words)
    hints = [HINT_IDS["unlisted"]] * len(words)
    normal = [_normalise(w) for w in words]
    taken = [False] * len(words)
    for names, kind in sorted(listed_entities(knowledge), key=lambda e: -len(e[0])):
        n = len(names)
        for start in range(len(words) - n + 1):
            if normal[start : start + n] == names and not any(taken[start : start + n]):
                hints[start] = HINT_IDS[f"B-{kind}"]
                for i in range(start + 1, start + n):
                    hints[i] = HINT_IDS[f"I-{kind}"]
                taken[start : start + n] = [True] * n
    return hints
