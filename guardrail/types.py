"""The typed vocabulary passed between guardrail's layers.

Token statistics come from a backend; signals are computed from them; a response carries the
whole record. Everything is a frozen dataclass: nothing string-keyed crosses a layer boundary
except the signal mapping, whose keys are the registered signal names.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

FinishReason = Literal["newline", "eos", "length"]


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of a continuation under one prompt.

    ``logprobs[i]`` is the log-probability of token ``i`` given everything before it;
    ``entropies[i]`` the Shannon entropy (nats) of the full next-token distribution at that
    position; ``top_ids[i]`` the most likely token there; ``margins[i]`` the probability gap
    between the two most likely tokens; ``kl_uniform[i]`` the KL divergence of the uniform
    distribution from the next-token distribution (self-certainty, Kang et al. 2025).
    ``full_vocab`` says whether the distribution statistics cover the whole vocabulary (local
    models) or a renormalised top-k (servers that return ``top_logprobs``).
    """

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    entropies: tuple[float, ...]
    top_ids: tuple[int, ...]
    margins: tuple[float, ...]
    kl_uniform: tuple[float, ...]
    full_vocab: bool = True

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        lengths = {
            len(self.tokens),
            len(self.logprobs),
            len(self.entropies),
            len(self.top_ids),
            len(self.margins),
            len(self.kl_uniform),
        }
        if lengths != {n}:
            raise ValueError(f"TokenStats fields must all have length {n}, got {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.token_ids)

    @classmethod
    def empty(cls) -> TokenStats:
        """Statistics of an empty continuation."""
        return cls((), (), (), (), (), (), ())


@dataclass(frozen=True)
class Generation:
    """A greedy (or sampled) continuation with its token statistics."""

    text: str
    stats: TokenStats
    prompt_tokens: int
    finish_reason: FinishReason
    seconds: float = 0.0
    probe_logprob: float | None = None
    """log p(probe | prompt) when ``generate`` was given a probe continuation, else None."""
    probe_seconds: float = 0.0
    """The part of ``seconds`` spent on the probe."""


@dataclass(frozen=True)
class Citation:
    """A passage the response cites, by id and source."""

    id: str
    source: str
    title: str
    score: float | None


@dataclass(frozen=True)
class Response:
    """What ``Guardrail.ask`` returns: the rendered text and the full decision record."""

    question: str
    text: str
    action: str
    answer: str
    confidence: float
    confidence_method: str
    signals: Mapping[str, float | None]
    flags: tuple[str, ...]
    flag_details: Mapping[str, str]
    citations: tuple[Citation, ...]
    rule: str
    reasons: tuple[str, ...]
    policy_name: str
    policy_hash: str
    model: str
    escalated: bool = False
    parametric_answer: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    tenant: str | None = None
    mode: str = "enforce"
    """``shadow``: the policy's decision is only recorded and ``action`` is ``answer``."""
    policy_action: str = ""
    """What the policy decided (equal to ``action`` when the policy is enforced)."""
    shadow: Mapping[str, Any] | None = None
    """The decision of the configured shadow policy on the same answer, if there is one."""
    recorded_at: float = field(default_factory=time.time)
    """When the decision was made (seconds since the epoch)."""
    original_question: str | None = None
    """In a conversation: the last user message as asked (``question`` is then its standalone
    rewrite, the question retrieved for and judged); None without earlier turns."""
    signal_sources: Mapping[str, str] = field(default_factory=dict)
    """Where each signal with a value came from: ``generator`` (the answering model's own
    tokens), ``guard`` (a local model that read the answer), ``probe``, ``retrieval``,
    ``text``, ``embedder`` or ``verifier``."""

    def __post_init__(self) -> None:
        if not self.policy_action:
            object.__setattr__(self, "policy_action", self.action)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the whole record (field by field: ``asdict`` deep-copies
        every value recursively, which cost about a millisecond a request in the service)."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        data["citations"] = tuple(asdict(c) for c in self.citations)
        for name in ("signals", "timings", "flag_details", "signal_sources"):
            data[name] = dict(data[name])
        if self.shadow is not None:
            data["shadow"] = dict(self.shadow)
        return data
