"""Text utilities: answer normalisation, phrase matching, sentences, words and negation.

Every comparison of an answer with a passage, a gold answer or another answer goes through
``normalize_answer`` (the SQuAD normalisation) after ``fold_quotes``, so that the signals, the
scoring of an evaluation and the rendering of a reply agree on what "the same answer" means.
"""

from __future__ import annotations

import re
import string
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def fold_quotes(text: str) -> str:
    """Typographic quotes and apostrophes as ASCII ones, so that "Smith\u2019s" reads as
    "Smith's" (the SQuAD normalisation strips only ASCII punctuation)."""
    return text.translate(_QUOTES)


def contains_phrase(text: str, normalized_phrase: str) -> bool:
    """Whether the normalised phrase occurs in ``text`` as whole words ("art" is not in
    "heart"); a trailing "s" is allowed, since normalisation turns "Eiffel's" into "eiffels"."""
    padded = f" {normalize_answer(fold_quotes(text))} "
    return f" {normalized_phrase} " in padded or f" {normalized_phrase}s " in padded


_STOP_TEXT = """
    a an the of in on at to for from by with and or is are was were be been being do does did
    what which who whom whose when where why how that this these those it its as into than
    then there their they he she his her him i you we our your not no can could would should
    may might will shall has have had about after before during over under between through
    more most other some such only own same so too very just if while also many much any each
    few both all up down out off again further once here name named called
    don doesn didn isn wasn weren aren won couldn wouldn shouldn hasn haven hadn"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
"""Lower-case words that say nothing about what a question asks."""

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATION = re.compile(
    r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|No|Nos|Vol|vs|Prof|Gen|Col|Lt|Sgt|Capt|Mt|Ft|Co|"
    r"Corp|Inc|Ltd|Bros|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|approx|ca|cf|etc|e\.g|"
    r"i\.e|a\.m|p\.m))\.$"
)


def split_sentences(text: str) -> list[str]:
    """``text`` cut after ".", "!" or "?" and white space, except after an initial ("U.",
    "J.") or a common abbreviation ("Dr.", "St.", "No.", "e.g."): "the U.S. Army" stays in
    one sentence."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [s for s in sentences if s.strip()]


def _plural(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def split_words(text: str) -> list[str]:
    """The lower-case alphanumeric words of ``text`` (quotes folded), a plural "s" cut."""
    return [_plural(w) for w in _WORD.findall(fold_quotes(text).lower())]


def squad_tokens(text: str) -> list[str]:
    """The words of ``text`` after the SQuAD normalisation (so that answer and sentence are
    cut alike: "$1.5 million" is "15 million" in both), a plural "s" cut."""
    return [_plural(w) for w in normalize_answer(fold_quotes(text)).split()]


def content_words(text: str) -> list[str]:
    """Lower-case content words of ``text`` (stop words and one-letter words removed)."""
    return [w for w in split_words(text) if w not in STOP_WORDS and len(w) > 1]


_NEGATION = re.compile(
    r"\b(?:not|never|none|nor|neither|without|cannot)\b|\bno\b(?!\.?\s*\d)|n['\u2019]t\b"
)
"""Negation words; "no" only when not a number sign ("No. 1")."""


def negated(text: str) -> bool:
    """Whether ``text`` holds a negation word (``_NEGATION``)."""
    return bool(_NEGATION.search(text.lower()))


_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate code point: never valid on its own in text (it cannot be encoded)."""


def surrogate_at(text: str) -> int | None:
    """The position of the first unpaired surrogate in ``text``, or None for valid text."""
    found = _SURROGATE.search(text)
    return found.start() if found else None


def printable(text: str) -> str:
    """``text`` with any unpaired surrogate written as its escape (``\\ud800``), so that it
    can be encoded and shown."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def valid_unicode(value: Any) -> Any:
    """``value`` (a string, or JSON-like lists and dicts of them) with every unpaired
    surrogate replaced by U+FFFD: what a model server or a wrapped model returns is made
    encodable before it reaches a record, a store or a log."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if surrogate_at(value) is not None else value
    if isinstance(value, list):
        return [valid_unicode(item) for item in value]
    if isinstance(value, dict):
        return {valid_unicode(k): valid_unicode(v) for k, v in value.items()}
    return value
