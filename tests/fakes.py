"""Deterministic, real implementations of project interfaces for unit tests.

``ScriptedBackend`` is a ``GeneratorBackend`` whose "model" is a hand-written table of
next-token distributions: one list of probability vectors for the prompt with passages
(contextual), one for the prompt without them (parametric) and, optionally, one for a
contextual prompt that has no documents. Step ``i`` of a script is the distribution that
predicts answer token ``i``; it does not depend on the tokens before it, which keeps the
expected signal values computable by hand. ``generate`` decodes greedily (the first most
likely token wins ties) and ends the line when the script runs out of steps; ``score``
teacher-forces the given tokens through the same table. Both reduce the distributions to
``TokenStats`` with the real ``token_stats_from_logits``, passing log-probabilities as logits
(a zero probability becomes ``EPSILON`` so every value stays finite).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from guardrail.backends.transformers import token_stats_from_logits
from guardrail.types import FinishReason, Generation, TokenStats

EPSILON = 1e-12
"""The probability that stands in for 0 in the logits."""

Distribution = Sequence[float]


def logits_of(probs: Distribution) -> list[float]:
    """Log-probabilities usable as logits, with ``EPSILON`` for a zero probability."""
    return [math.log(max(p, EPSILON)) for p in probs]


def peaked(vocab: Sequence[str], token: str, p: float) -> list[float]:
    """Probability ``p`` on ``token`` and the rest spread evenly over the other tokens."""
    rest = (1.0 - p) / (len(vocab) - 1)
    return [p if word == token else rest for word in vocab]


def uniform(vocab: Sequence[str], over: Sequence[str] | None = None) -> list[float]:
    """Uniform over ``over`` (default: the whole vocabulary), zero elsewhere."""
    support = set(vocab if over is None else over)
    return [1.0 / len(support) if word in support else 0.0 for word in vocab]


def _argmax(probs: Distribution) -> int:
    best = 0
    for i, p in enumerate(probs):
        if p > probs[best]:
            best = i
    return best


class ScriptedBackend:
    """A greedy ``GeneratorBackend`` over scripted next-token distributions.

    ``calls`` records ``(method, prompt kind)`` pairs, where the kind is ``"contextual"``,
    ``"no_documents"`` or ``"parametric"``, so tests can see which prompts were run.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        contextual: Sequence[Distribution],
        parametric: Sequence[Distribution],
        no_documents: Sequence[Distribution] | None = None,
        name: str = "scripted",
    ) -> None:
        if len(set(vocab)) != len(vocab) or len(vocab) < 2:
            raise ValueError(f"the vocabulary needs at least 2 distinct tokens, got {vocab!r}")
        self.vocab = tuple(vocab)
        self.name = name
        self.chat = False
        self.scripts: dict[str, tuple[tuple[float, ...], ...]] = {
            "contextual": self._checked(contextual),
            "parametric": self._checked(parametric),
            "no_documents": self._checked(no_documents if no_documents is not None else parametric),
        }
        self.calls: list[tuple[str, str]] = []

    def _checked(self, steps: Sequence[Distribution]) -> tuple[tuple[float, ...], ...]:
        for i, probs in enumerate(steps):
            if len(probs) != len(self.vocab):
                raise ValueError(f"step {i}: {len(probs)} probabilities for {len(self.vocab)}")
            if min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-9):
                raise ValueError(f"step {i}: not a probability vector: {list(probs)}")
        return tuple(tuple(float(p) for p in probs) for probs in steps)

    @staticmethod
    def kind(prompt: str) -> str:
        """Which script answers ``prompt``: judged by its last ``Context:`` block, if any."""
        if "Context:" not in prompt:
            return "parametric"
        context = prompt.rsplit("Context:", 1)[1].split("\nQuestion:", 1)[0].strip()
        return "no_documents" if context == "(no documents)" else "contextual"

    def _stats(self, steps: Sequence[Distribution], ids: Sequence[int]) -> TokenStats:
        rows = torch.tensor([logits_of(probs) for probs in steps], dtype=torch.float64)
        rows = rows.reshape(len(ids), len(self.vocab))
        return token_stats_from_logits(rows, ids, [self.vocab[i] for i in ids])

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        probe: str | None = None,
    ) -> Generation:
        """Greedy decoding through the script; the answer is the tokens joined by spaces.

        The probe's log-probability is read from the same script when its words are in the
        vocabulary and the script is long enough, and is None otherwise."""
        if temperature != 0.0:
            raise ValueError("ScriptedBackend decodes greedily only (temperature 0)")
        kind = self.kind(prompt)
        self.calls.append(("generate", kind))
        steps = self.scripts[kind]
        finish: FinishReason = "newline"
        if len(steps) > max_new_tokens:
            steps, finish = steps[:max_new_tokens], "length"
        ids = [_argmax(probs) for probs in steps]
        return Generation(
            text=" ".join(self.vocab[i] for i in ids),
            stats=self._stats(steps, ids),
            prompt_tokens=len(prompt.split()),
            finish_reason=finish,
            probe_logprob=self._probe(self.scripts[kind], probe),
        )

    def _probe(self, steps: Sequence[Distribution], probe: str | None) -> float | None:
        words = probe.split() if probe else []
        if not words or len(words) > len(steps) or any(w not in self.vocab for w in words):
            return None
        return sum(
            math.log(max(steps[i][self.vocab.index(w)], EPSILON)) for i, w in enumerate(words)
        )

    def score(self, prompt: str, continuation: str | Sequence[int]) -> TokenStats:
        """Teacher-force ``continuation`` (ids, or words of the vocabulary) through the script."""
        kind = self.kind(prompt)
        self.calls.append(("score", kind))
        if isinstance(continuation, str):
            unknown = [w for w in continuation.split() if w not in self.vocab]
            if unknown:
                raise ValueError(f"words outside the vocabulary: {unknown}")
            ids = [self.vocab.index(w) for w in continuation.split()]
        else:
            ids = [int(i) for i in continuation]
        steps = self.scripts[kind]
        if len(ids) > len(steps):
            raise ValueError(f"{len(ids)} tokens to score but the {kind} script has {len(steps)}")
        return self._stats(steps[: len(ids)], ids)

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """A plain ``role: content`` rendering that opens the assistant turn."""
        return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"
