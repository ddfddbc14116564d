"""The decision function: a policy applied to an assessment.

:func:`decide` is pure: no I/O, no clock, no randomness; the same inputs always give the same
decision, reasons included. It needs numbers to compare the confidence with: a policy whose
thresholds are a risk target must be certified first (:func:`policies.certification.certify`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from policies.conditions import (
    CONFIDENCE,
    AllCondition,
    Condition,
    FlagCondition,
    NotCondition,
    SignalCondition,
)
from policies.schema import Policy
from policies.types import Action, Assessment, Decision

_OPERATORS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "lt": ("<", operator.lt),
    "le": ("<=", operator.le),
    "gt": (">", operator.gt),
    "ge": (">=", operator.ge),
    "eq": ("==", operator.eq),
    "ne": ("!=", operator.ne),
}


@dataclass(frozen=True)
class _Outcome:
    """Whether a condition held, the sentences explaining why, and the signals it lacked."""

    held: bool
    reasons: tuple[str, ...]
    missing: tuple[str, ...] = ()


def decide(assessment: Assessment, policy: Policy) -> Decision:
    """Apply ``policy`` to ``assessment``: the first matching rule wins, else the thresholds.

    Reasons list the rule's own reason (if it has one), then the conditions that decided the
    outcome, then the earlier rules that did not match because a signal had no value.
    Raises :class:`~policies.errors.PolicyNotCertifiedError` for a risk target not certified.
    """
    thresholds = policy.decision_thresholds()
    notes: list[str] = []
    for rule in policy.rules:
        outcome = _evaluate(rule.when, assessment)
        if outcome.held:
            reasons = ((rule.reason,) if rule.reason else ()) + outcome.reasons
            return _decision(policy, rule.action, rule.name, reasons + tuple(notes))
        if outcome.missing:
            lacking = ", ".join(dict.fromkeys(outcome.missing))
            notes.append(f"rule {rule.name!r} did not match; it had no value for {lacking}")

    certificate = thresholds.certified
    answer_ok = certificate is None or certificate.answer_feasible
    hedge_ok = certificate is None or certificate.hedge_feasible
    confidence = assessment.confidence
    shown, answer_at = _numbers(confidence, thresholds.answer)
    if answer_ok and confidence >= thresholds.answer:
        reason = f"confidence {shown} is at or above the answer threshold {answer_at}"
        return _decision(policy, Action.ANSWER, "threshold:answer", (reason, *notes))
    shown_h, hedge_at = _numbers(confidence, thresholds.hedge)
    if hedge_ok and confidence >= thresholds.hedge:
        below = (
            f"is below the answer threshold {answer_at}"
            if answer_ok
            else "is not enough to answer plainly (no answer threshold meets the risk target)"
        )
        reason = f"confidence {shown} {below} and at or above the hedge threshold {hedge_at}"
        return _decision(policy, Action.HEDGE, "threshold:hedge", (reason, *notes))
    if not (answer_ok or hedge_ok):
        assert certificate is not None
        reason = f"no threshold meets the policy's risk target: {certificate.message}"
    elif not hedge_ok:
        reason = f"confidence {shown} is below the answer threshold {answer_at}"
    else:
        reason = f"confidence {shown_h} is below the hedge threshold {hedge_at}"
    return _decision(policy, thresholds.otherwise, "threshold:otherwise", (reason, *notes))


@dataclass(frozen=True)
class RuleTrace:
    """How one rule fared on an assessment: whether it matched, and why."""

    rule: str
    matched: bool
    reasons: tuple[str, ...]


def trace(assessment: Assessment, policy: Policy) -> tuple[list[RuleTrace], Decision]:
    """Every rule checked before the decision, in order, and the decision itself.

    The rules after the first match are not checked (first match wins), so they are absent.
    """
    traces: list[RuleTrace] = []
    for rule in policy.rules:
        outcome = _evaluate(rule.when, assessment)
        traces.append(RuleTrace(rule.name, outcome.held, outcome.reasons))
        if outcome.held:
            break
    return traces, decide(assessment, policy)


def _decision(policy: Policy, action: Action, rule: str, reasons: tuple[str, ...]) -> Decision:
    return Decision(
        action=action,
        rule=rule,
        reasons=reasons,
        policy_name=policy.name,
        policy_hash=policy.content_hash,
    )


def _evaluate(condition: Condition, assessment: Assessment) -> _Outcome:
    """Evaluate every branch (no short-circuit) so that reasons and missing values are complete."""
    if isinstance(condition, SignalCondition):
        return _compare(condition, assessment)
    if isinstance(condition, FlagCondition):
        held = condition.flag in assessment.flags
        return _Outcome(held, (f"flag {condition.flag} is {'set' if held else 'not set'}",))
    if isinstance(condition, NotCondition):
        inner = _evaluate(condition.condition, assessment)
        return _Outcome(not inner.held, inner.reasons, inner.missing)
    outcomes = [_evaluate(child, assessment) for child in condition.conditions]
    missing = tuple(name for outcome in outcomes for name in outcome.missing)
    if isinstance(condition, AllCondition):
        held = all(outcome.held for outcome in outcomes)
        # All held: every child is evidence. Otherwise only the failing children explain it.
        explaining = outcomes if held else [o for o in outcomes if not o.held]
    else:
        held = any(outcome.held for outcome in outcomes)
        explaining = [o for o in outcomes if o.held] if held else outcomes
    reasons = tuple(reason for outcome in explaining for reason in outcome.reasons)
    return _Outcome(held, reasons, missing)


def _compare(condition: SignalCondition, assessment: Assessment) -> _Outcome:
    name = condition.signal
    value = assessment.confidence if name == CONFIDENCE else assessment.signals.get(name)
    symbol, compare = _OPERATORS[condition.op]
    if value is None or math.isnan(value):
        stated = f"{name} {symbol} {condition.threshold:g}"
        return _Outcome(False, (f"{name} has no value, so '{stated}' is false",), (name,))
    shown, limit = _numbers(value, condition.threshold)
    if compare(value, condition.threshold):
        return _Outcome(True, (f"{name} {shown} {symbol} {limit}",))
    return _Outcome(False, (f"{name} {shown} is not {symbol} {limit}",))


def _numbers(value: float, threshold: float) -> tuple[str, str]:
    """Short renderings of a measured value and a threshold that never look equal if not."""
    shown, limit = f"{value:.4g}", f"{threshold:g}"
    if shown == limit and value != threshold:
        shown, limit = repr(float(value)), repr(float(threshold))
    return shown, limit
