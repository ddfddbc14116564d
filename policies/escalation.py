"""Escalation chains: targets tried in order, within their budgets, and the fallback.

:func:`run_chain` holds the whole logic of an escalation (which target is tried, which is
skipped for its budget, what happens when none answers) apart from how a target is asked,
which the caller supplies as a function. :class:`EscalationLedger` counts decisions and
escalations in memory for the budgets; it is thread-safe and takes its clock as an argument.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

from policies.schema import Budget, Policy, Target
from policies.types import Action, Decision

T = TypeVar("T")

_MINUTE = 60.0
_DEFAULT_HORIZON = 3600.0
"""Decisions are kept at least this long (the default budget window)."""


class TargetFailed(Exception):
    """Raised by an attempt when a target could not answer at all (not configured, down)."""


class BudgetLedger(Protocol):
    """Counts decisions and escalations for budgets (in process, or shared in Redis)."""

    def record_decision(self, scope: str) -> None:
        """Count one decision (whatever its action) in ``scope``."""
        ...

    def acquire(self, scope: str, target: Target, chain: Budget | None) -> str | None:
        """Count an escalation to ``target`` and return ``None``, or say which budget is spent."""
        ...

    def release(self, scope: str, target: Target) -> None:
        """Give back the escalation to ``target`` counted last (it failed without answering:
        a budget pays for answers tried, not for targets that could not run)."""
        ...


class EscalationLedger:
    """Counts of decisions and escalations per scope (a policy name), for budgets.

    ``record_decision`` is called once per decision; :meth:`acquire` checks a target's budget
    and the chain's budget and, when both allow it, counts the escalation. Decisions are kept
    for the longest budget window the scope has used (at least an hour), escalations for
    their own budget's window, so memory stays bounded by the traffic of that window.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._decisions: dict[str, deque[float]] = defaultdict(deque)
        self._escalations: dict[tuple[str, str | None], deque[float]] = defaultdict(deque)
        self._horizon: dict[str, float] = defaultdict(lambda: _DEFAULT_HORIZON)

    @staticmethod
    def _trim(times: deque[float], since: float) -> None:
        while times and times[0] < since:
            times.popleft()

    def record_decision(self, scope: str) -> None:
        """Count one decision (whatever its action) in ``scope``."""
        with self._lock:
            now = self._clock()
            decisions = self._decisions[scope]
            decisions.append(now)
            self._trim(decisions, now - self._horizon[scope])

    def acquire(self, scope: str, target: Target, chain: Budget | None) -> str | None:
        """Count an escalation to ``target`` and return ``None``, or say which budget is spent."""
        with self._lock:
            now = self._clock()
            for budget in (target.budget, chain):
                if budget is not None:
                    self._horizon[scope] = max(self._horizon[scope], budget.window_seconds)
            for budget, key, what in (
                (target.budget, (scope, target.name), f"target {target.name!r}"),
                (chain, (scope, None), "the escalation chain"),
            ):
                if budget is None:
                    continue
                spent = self._spent(budget, key, now)
                if spent is not None:
                    return f"{what} is over its budget: {spent}"
            for key in ((scope, target.name), (scope, None)):
                done = self._escalations[key]
                done.append(now)
                self._trim(done, now - self._horizon[scope])
            return None

    def release(self, scope: str, target: Target) -> None:
        """Give back the escalation to ``target`` counted last."""
        with self._lock:
            for key in ((scope, target.name), (scope, None)):
                done = self._escalations.get(key)
                if done:
                    done.pop()

    def _spent(self, budget: Budget, key: tuple[str, str | None], now: float) -> str | None:
        done = self._escalations[key]
        decisions = self._decisions[key[0]]
        if budget.per_minute is not None:
            last_minute = sum(1 for t in done if t >= now - _MINUTE)
            if last_minute + 1 > budget.per_minute:
                return (
                    f"{last_minute} escalations in the last minute "
                    f"(limit {budget.per_minute} per minute)"
                )
        if budget.max_share is not None:
            in_window = sum(1 for t in done if t >= now - budget.window_seconds)
            seen = sum(1 for t in decisions if t >= now - budget.window_seconds)
            allowed = math.ceil(budget.max_share * max(seen, 1))
            if in_window + 1 > allowed:
                return (
                    f"{in_window} escalations among {seen} decisions in the last "
                    f"{budget.window_seconds:g} s (limit {budget.max_share:.0%} of decisions)"
                )
        return None


@dataclass(frozen=True)
class ChainResult(Generic[T]):
    """What an escalation ended with: the accepted target's result (or ``None``) and the
    final decision, whose reasons tell the story of every target tried or skipped."""

    result: T | None
    decision: Decision
    target: str | None


def run_chain(
    first: Decision,
    policy: Policy,
    attempt: Callable[[str], tuple[T, Decision]],
    ledger: BudgetLedger,
    *,
    first_answered: bool,
) -> ChainResult[T]:
    """Escalate after ``first`` (an ``escalate`` decision) along the policy's chain.

    ``attempt(target)`` asks one target and returns its result with the policy's decision on
    it, or raises :class:`TargetFailed`. The first target whose decision is ``answer`` or
    ``hedge`` wins. A target over its budget is skipped. When no target wins, the policy's
    ``on_failure`` applies: ``defer``, or ``hedge`` the first answer when there was one
    (``first_answered``; a model that found no answer cannot be hedged, so that defers).
    """
    settings = policy.actions.escalate
    reasons = list(first.reasons)
    for target in settings.targets:
        spent = ledger.acquire(policy.name, target, settings.budget)
        if spent is not None:
            reasons.append(f"skipped escalation target {target.name!r}: {spent}")
            continue
        try:
            result, decision = attempt(target.name)
        except BaseException as exc:
            # The target produced nothing: its budget is given back. A failure moves on to
            # the next target; anything else (the request was cancelled, ...) ends the chain.
            ledger.release(policy.name, target)
            if not isinstance(exc, TargetFailed):
                raise
            reasons.append(
                f"escalation target {target.name!r} failed: {exc} (its budget was not spent)"
            )
            continue
        if decision.action in (Action.ANSWER, Action.HEDGE):
            why = f"escalated to {target.name}: " + "; ".join(reasons)
            return ChainResult(
                result, replace(decision, reasons=(why, *decision.reasons)), target.name
            )
        reasons.append(
            f"escalation target {target.name!r} was not confident either "
            f"({'; '.join(decision.reasons)})"
        )
    if settings.on_failure is Action.HEDGE and first_answered:
        action, ending = Action.HEDGE, "no escalation target answered: hedging the first answer"
    else:
        action, ending = Action.DEFER, "no escalation target produced an answer the policy accepts"
    fallback = Decision(
        action=action,
        rule="escalation:exhausted",
        reasons=(*reasons, ending),
        policy_name=first.policy_name,
        policy_hash=first.policy_hash,
    )
    return ChainResult(None, fallback, None)
