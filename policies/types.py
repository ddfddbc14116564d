"""The vocabulary of decisions: what a decision is made on, and what it says."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Action(StrEnum):
    """What the middleware does with a question (a ``str`` enum: ``Action.HEDGE == "hedge"``)."""

    ANSWER = "answer"
    HEDGE = "hedge"
    DEFER = "defer"
    ESCALATE = "escalate"


@dataclass(frozen=True)
class Assessment:
    """What a decision is made on: calibrated confidence, raw signal values and set flags.

    ``confidence`` is the calibrated probability that the answer is correct, in [0, 1].
    A signal value of ``None`` (or a signal absent from ``signals``) means it could not be
    measured, for example log-probability signals on a backend that returns no log-probs.
    """

    confidence: float
    signals: Mapping[str, float | None]
    flags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, int | float):
            raise TypeError(f"confidence must be a number, got {type(self.confidence).__name__}")
        if not (math.isfinite(self.confidence) and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence!r}")
        # Copy so that a caller mutating its dict or set cannot change a recorded assessment.
        object.__setattr__(self, "signals", MappingProxyType(dict(self.signals)))
        object.__setattr__(self, "flags", frozenset(self.flags))


@dataclass(frozen=True)
class Decision:
    """The outcome of applying a policy to an assessment.

    ``rule`` is the name of the rule that matched, or ``"threshold:answer"``,
    ``"threshold:hedge"`` or ``"threshold:otherwise"`` when no rule matched.
    ``reasons`` are human-readable sentences, most important first.
    """

    action: Action
    rule: str
    reasons: tuple[str, ...]
    policy_name: str
    policy_hash: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the action as its string value, reasons as a list)."""
        return {
            "action": self.action.value,
            "rule": self.rule,
            "reasons": list(self.reasons),
            "policy_name": self.policy_name,
            "policy_hash": self.policy_hash,
        }
