"""Replay a policy over an evaluation's cached records: the action it takes on each question.

An escalation runs the policy's chain on its target models (their answers cached like the
records), so an evaluation scores what the policy would have returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.runner import EvalRunner, Record
from policies import Action, Assessment, Policy, decide
from policies.escalation import EscalationLedger


class _QuestionClock:
    """A clock that advances by what each question took when it was measured, so that
    escalation budgets count the same in a cached rerun (which takes milliseconds) as in the
    run that made the records."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy_actions(
    runner: EvalRunner,
    items: Sequence[EvalItem],
    records: Sequence[Record],
    policy: Policy,
    *,
    escalate: bool = True,
) -> tuple[list[str], list[Record]]:
    """The policy's action for each record. An escalation runs the policy's chain on the
    target models (their answers cached like the records) and is scored on what it returns
    (that answer replaces the original); with ``escalate=False`` it counts as a defer.
    Budgets see every decision, one question after another at the pace the records were
    measured (``_QuestionClock``)."""
    scorer = runner.guardrail.scorer
    clock = _QuestionClock()
    ledger = EscalationLedger(clock=clock)
    actions: list[str] = []
    scored: list[Record] = []
    for item, record in zip(items, records, strict=True):
        clock.now += sum(record.timings.values())
        confidence = scorer.confidence(record.signals, abstained=record.abstained)
        decision = decide(
            Assessment(confidence, dict(record.signals), frozenset(record.flags)), policy
        )
        ledger.record_decision(policy.name)
        if decision.action is Action.ESCALATE:
            if escalate:
                passages, _ = runner.passages_for(item)
                assessed, decision = runner.guardrail.escalate(
                    item.question,
                    passages,
                    decision,
                    policy=policy,
                    scorer=scorer,
                    assess=runner.assess_target,
                    ledger=ledger,
                )
                if assessed is not None:
                    record = replace(record, answer=assessed.answer, abstained=assessed.abstained)
            else:
                decision = replace(decision, action=Action.DEFER)
        actions.append(decision.action.value)
        scored.append(record)
    return actions, scored
