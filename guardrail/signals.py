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
}
"""The registered signals, by name. Policies may reference exactly these names."""

SIGNAL_NAMES: frozenset[str] = frozenset(SIGNALS)


def compute_signals(inputs: SignalInputs) -> dict[str, float | None]:
    """Every registered signal for one answer."""
    return {name: fn(inputs) for name, fn in SIGNALS.items()}
