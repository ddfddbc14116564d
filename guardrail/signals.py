"""Confidence signals: each computes one number from a generation record.

Notation (DESIGN.md): for answer token t, ``p_ctx,t`` is the next-token distribution with the
passages in the prompt and ``p_par,t`` the one at the same position without them (the same
answer prefix teacher-forced in ONE ``score`` pass). ``H`` is Shannon entropy in nats.

- ``cg_mean`` / ``cg_min`` / ``cg_first``: Confidence Gain ``CG_t = H(p_par,t) - H(p_ctx,t)``
  (CK-PLUG, Bi et al. 2025) averaged, minimum, and at the first answer token. Positive: the
  passages made the model more certain; negative: less certain (a knowledge conflict).
- ``cg_negative_share``: share of answer tokens with ``CG_t < 0`` (the paper's condition).
- ``parametric_agreement``: share of answer tokens that the model would have chosen without
  the passages (argmax of ``p_par,t`` equals the answer token).
- ``parametric_logprob``: mean log-probability of the answer tokens without the passages.
- ``mean_logprob``, ``mean_entropy``, ``min_token_prob``, ``first_token_margin``,
  ``self_certainty``: token statistics of the contextual answer (self-certainty is the mean
  KL divergence of the uniform distribution from each next-token distribution).
- ``retrieval_top_score``, ``retrieval_margin``: cosine score of the best passage and its gap
  to the second; ``answer_in_passages``: 1.0 when the normalised answer occurs in a passage.
- ``abstain_logprob``: log-probability, under the contextual prompt, of the abstention answer
  ("unanswerable") as a whole continuation: how strongly the model considered saying it has
  no answer, whatever it then said (read from the generation's prompt cache).
- ``answer_tokens``: the number of answer tokens.
- ``question_overlap``: the share of the question's content words (lower case, stop words
  removed, a plural "s" ignored) that occur anywhere in the passages: does the document talk
  about exactly what was asked? A question about an entity the passages never name scores low.
- ``answer_sentence_overlap``: the same share measured on the passage sentence that holds the
  answer (the best one if several do): is the answer drawn from the sentence that addresses
  the question, or from an unrelated one? None when the answer is not found in a passage.

``question_overlap``, ``answer_sentence_overlap``, ``answer_in_passages`` and the retrieval
signals read only text and scores (``TEXT_SIGNALS``): they cost nothing next to the model and
can be recomputed from a stored answer at any time.

A signal that cannot be computed (no answer tokens, no parametric pass, no passages) is
``None``; policies treat a missing value as not matching any comparison.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from guardrail.types import TokenStats
from retrievers import Passage


@dataclass(frozen=True)
class SignalInputs:
    """Everything a signal may read: the two token records, the answer and the passages."""

    answer: str
    contextual: TokenStats
    parametric: TokenStats | None
    passages: Sequence[Passage]
    abstain_logprob: float | None = None
    question: str = ""


SignalFn = Callable[[SignalInputs], float | None]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def confidence_gains(inputs: SignalInputs) -> list[float]:
    """Per-token Confidence Gain ``H(p_par,t) - H(p_ctx,t)``; empty without a parametric pass."""
    if inputs.parametric is None:
        return []
    return [
        hp - hc
        for hp, hc in zip(inputs.parametric.entropies, inputs.contextual.entropies, strict=True)
    ]


def _cg_mean(x: SignalInputs) -> float | None:
    return _mean(confidence_gains(x))


def _cg_min(x: SignalInputs) -> float | None:
    gains = confidence_gains(x)
    return min(gains) if gains else None


def _cg_first(x: SignalInputs) -> float | None:
    gains = confidence_gains(x)
    return gains[0] if gains else None


def _cg_negative_share(x: SignalInputs) -> float | None:
    gains = confidence_gains(x)
    return sum(g < 0 for g in gains) / len(gains) if gains else None


def _parametric_agreement(x: SignalInputs) -> float | None:
    if x.parametric is None or not x.contextual.token_ids:
        return None
    pairs = zip(x.parametric.top_ids, x.contextual.token_ids, strict=True)
    return sum(top == tok for top, tok in pairs) / len(x.contextual.token_ids)


def _parametric_logprob(x: SignalInputs) -> float | None:
    return _mean(x.parametric.logprobs) if x.parametric is not None else None


def _mean_logprob(x: SignalInputs) -> float | None:
    return _mean(x.contextual.logprobs)


def _mean_entropy(x: SignalInputs) -> float | None:
    return _mean(x.contextual.entropies)


def _min_token_prob(x: SignalInputs) -> float | None:
    lps = x.contextual.logprobs
    return math.exp(min(lps)) if lps else None


def _first_token_margin(x: SignalInputs) -> float | None:
    return x.contextual.margins[0] if x.contextual.margins else None


def _self_certainty(x: SignalInputs) -> float | None:
    return _mean(x.contextual.kl_uniform)


def _retrieval_top_score(x: SignalInputs) -> float | None:
    scores = [p.score for p in x.passages if p.score is not None]
    return max(scores) if scores else None


def _retrieval_margin(x: SignalInputs) -> float | None:
    scores = sorted((p.score for p in x.passages if p.score is not None), reverse=True)
    return scores[0] - scores[1] if len(scores) >= 2 else None


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def contains_phrase(text: str, normalized_phrase: str) -> bool:
    """Whether the normalised phrase occurs in ``text`` as whole words ("art" is not in
    "heart"); a trailing "s" is allowed, since normalisation turns "Eiffel's" into "eiffels"."""
    padded = f" {normalize_answer(text)} "
    return f" {normalized_phrase} " in padded or f" {normalized_phrase}s " in padded


def _answer_in_passages(x: SignalInputs) -> float | None:
    answer = normalize_answer(x.answer)
    if not answer or not x.passages:
        return None
    return float(any(contains_phrase(p.text, answer) for p in x.passages))


def _abstain_logprob(x: SignalInputs) -> float | None:
    return x.abstain_logprob


def _answer_tokens(x: SignalInputs) -> float | None:
    return float(len(x.contextual))


_STOP_TEXT = """
    a an the of in on at to for from by with and or is are was were be been being do does did
    what which who whom whose when where why how that this these those it its as into than
    then there their they he she his her him i you we our your not no can could would should
    may might will shall has have had about after before during over under between through
    more most other some such only own same so too very just if while also many much any each
    few both all up down out off again further once here name named called"""
_STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _words(text: str) -> list[str]:
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall(text.lower())]


def content_words(text: str) -> list[str]:
    """Lower-case content words of ``text`` (stop words and one-letter words removed)."""
    return [w for w in _words(text) if w not in _STOP_WORDS and len(w) > 1]


def _overlap(question_words: Sequence[str], text: str) -> float:
    present = set(_words(text))
    return sum(w in present for w in question_words) / len(question_words)


def _question_overlap(x: SignalInputs) -> float | None:
    words = content_words(x.question)
    if not words or not x.passages:
        return None
    return _overlap(words, " ".join(p.text for p in x.passages))


def _answer_sentence_overlap(x: SignalInputs) -> float | None:
    words = content_words(x.question)
    answer = normalize_answer(x.answer)
    if not words or not answer:
        return None
    holding = [
        sentence
        for p in x.passages
        for sentence in _SENTENCE_END.split(p.text)
        if contains_phrase(sentence, answer)
    ]
    return max((_overlap(words, s) for s in holding), default=None)


SIGNALS: Mapping[str, SignalFn] = {
    "cg_mean": _cg_mean,
    "cg_min": _cg_min,
    "cg_first": _cg_first,
    "cg_negative_share": _cg_negative_share,
    "parametric_agreement": _parametric_agreement,
    "parametric_logprob": _parametric_logprob,
    "mean_logprob": _mean_logprob,
    "mean_entropy": _mean_entropy,
    "min_token_prob": _min_token_prob,
    "first_token_margin": _first_token_margin,
    "self_certainty": _self_certainty,
    "retrieval_top_score": _retrieval_top_score,
    "retrieval_margin": _retrieval_margin,
    "answer_in_passages": _answer_in_passages,
    "abstain_logprob": _abstain_logprob,
    "answer_tokens": _answer_tokens,
    "question_overlap": _question_overlap,
    "answer_sentence_overlap": _answer_sentence_overlap,
}
"""The registered signals, by name. Policies may reference exactly these names."""

SIGNAL_NAMES: frozenset[str] = frozenset(SIGNALS)


TEXT_SIGNALS: frozenset[str] = frozenset(
    {
        "question_overlap",
        "answer_sentence_overlap",
        "answer_in_passages",
        "retrieval_top_score",
        "retrieval_margin",
    }
)
"""Signals computed from text and retrieval scores alone (no model output but the answer)."""


def compute_signals(inputs: SignalInputs) -> dict[str, float | None]:
    """Every registered signal for one answer."""
    return {name: fn(inputs) for name, fn in SIGNALS.items()}


def compute_text_signals(
    question: str, answer: str, passages: Sequence[Passage]
) -> dict[str, float | None]:
    """The ``TEXT_SIGNALS`` of a stored answer, without any model."""
    inputs = SignalInputs(answer, TokenStats.empty(), None, passages, question=question)
    return {name: SIGNALS[name](inputs) for name in sorted(TEXT_SIGNALS)}
