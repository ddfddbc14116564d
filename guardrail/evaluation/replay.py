"""Replay a policy over an evaluation's cached records: the action it takes on each question.

The replay takes the decision path of a live request (:func:`guardrail.judge.judge_question`):
the first answer comes from the record, an escalation target's from the runner's cache (or
the target model, whose answer is then cached), so an evaluation scores what the policy would
have returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.runner import EvalRunner, Record
from guardrail.judge import Assessed, Judge, judge_question
from policies import Action
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
    judge: Judge,
    *,
    escalate: bool = True,
) -> tuple[list[str], list[Record]]:
    """The action ``judge`` takes on each record. An escalation runs the policy's chain on
    the target models (their answers cached like the records) and is scored on what it
    returns (that answer replaces the original); with ``escalate=False`` it counts as a
    defer. Budgets see every decision, one question after another at the pace the records
    were measured (``_QuestionClock``)."""
    clock = _QuestionClock()
    ledger = EscalationLedger(clock=clock)
    actions: list[str] = []
    scored: list[Record] = []
    for item, record in zip(items, records, strict=True):
        clock.now += sum(record.timings.values())

        def answer(target: str | None, item: EvalItem = item, record: Record = record) -> Assessed:
            if target is None:
                return runner.assessed(record, judge)
            passages, _ = runner.passages_for(item)
            backend = runner.guardrail.escalation_backend(target)
            return runner.assess_target(backend, item.question, passages, judge)

        verdict = judge_question(judge, answer, ledger, escalate=escalate)
        decision = verdict.decision
        if verdict.escalated:
            assessed = verdict.assessed
            record = replace(record, answer=assessed.answer, abstained=assessed.abstained)
        if decision.action is Action.ESCALATE:
            decision = replace(decision, action=Action.DEFER)  # not run: it does not answer
        actions.append(decision.action.value)
        scored.append(record)
    return actions, scored
