"""The judge: whether an answer may go out, and the one path every decision takes.

A :class:`Judge` is what decides for one request: the policy in force for the tenant, the
confidence scorer that policy was loaded with (its calibrator, or the heuristic), and whether
the abstention probe must be measured. It is obtained in one place,
:meth:`guardrail.policy_runtime.Loaded.judge`, and computes the confidence and the decision
for everything that decides: :func:`judge_question` (the pipeline's ``ask``, hence the
service and the LangChain wrapper, and the evaluation's replay of cached runs), the shadow
policy, and ``guardrail policy explain``.

:func:`judge_question` takes the answers as a parameter (``AnswerSource``: the generator's
answer, then each escalation target's on demand), so that a caller with answers of its own
(the evaluation's cache) goes through the same steps as a live request.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from guardrail.backends.base import GeneratorBackend
from guardrail.cancel import Cancelled
from guardrail.errors import GuardrailError
from guardrail.signals import REGISTRY, Needs
from guardrail.types import Generation, TokenStats
from policies import Action, Assessment, Decision, Policy, decide
from policies.decide import RuleTrace, trace
from policies.escalation import BudgetLedger, TargetFailed, run_chain
from retrievers.types import Passage

PROBE_SIGNALS: frozenset[str] = frozenset(s.name for s in REGISTRY if s.needs is Needs.PROBE)
"""The signals only the optional abstention probe measures (``abstain_logprob``)."""


class ConfidenceScorer(Protocol):
    """Turns one response's signals into its confidence (a heuristic or a calibrator)."""

    @property
    def method(self) -> str:
        """How the confidence is computed, recorded with each response."""
        ...

    def confidence(self, signals: Mapping[str, float | None], *, abstained: bool) -> float:
        """The confidence in [0, 1]."""
        ...


def needs_probe(policy: Policy, scorer: ConfidenceScorer) -> bool:
    """Whether ``policy`` reads ``abstain_logprob``: its calibrator as a feature, or its rules
    in a condition."""
    features: Collection[str] = getattr(scorer, "features", ())
    return bool(PROBE_SIGNALS & (set(features) | policy.signal_names()))


@dataclass(frozen=True)
class Assessed:
    """One model's answer to one question, with everything measured about it and the
    confidence the judge gave it."""

    backend: GeneratorBackend
    generation: Generation
    parametric: TokenStats | None
    answer: str
    abstained: bool
    signals: Mapping[str, float | None]
    flags: Mapping[str, str]
    confidence: float
    timings: Mapping[str, float]
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each signal that has a value came from (``guardrail.signals.SOURCES``)."""
    passages: Sequence[Passage] | None = None
    """The passages the answer was written from, when not all given ones fit the model's
    context (None: all of them)."""

    def assessment(self) -> Assessment:
        """What the policy decides on."""
        return Assessment(self.confidence, dict(self.signals), frozenset(self.flags))


@dataclass(frozen=True)
class Judge:
    """The policy in force for one request, its confidence scorer, and whether the
    abstention probe is measured for it."""

    policy: Policy
    scorer: ConfidenceScorer
    probe: bool

    @property
    def shadow_mode(self) -> bool:
        """Whether the policy only records its decisions (``mode: shadow``)."""
        return self.policy.mode == "shadow"

    def confidence(self, signals: Mapping[str, float | None], *, abstained: bool) -> float:
        """The confidence of one response under this judge's scorer."""
        return self.scorer.confidence(signals, abstained=abstained)

    def assessment(
        self,
        signals: Mapping[str, float | None],
        flags: Collection[str],
        *,
        abstained: bool,
        confidence: float | None = None,
    ) -> Assessment:
        """What the policy decides on; the confidence is computed unless given."""
        if confidence is None:
            confidence = self.confidence(signals, abstained=abstained)
        return Assessment(confidence, dict(signals), frozenset(flags))

    def decide(self, assessment: Assessment) -> Decision:
        """The policy's decision (pure: :func:`policies.decide`)."""
        return decide(assessment, self.policy)

    def trace(self, assessment: Assessment) -> tuple[list[RuleTrace], Decision]:
        """Every rule checked before the decision, and the decision (for explanations)."""
        return trace(assessment, self.policy)


@dataclass(frozen=True)
class Verdict:
    """The answer that was judged last, the decision on it, and whether it came from an
    escalation target."""

    assessed: Assessed
    decision: Decision
    escalated: bool


AnswerSource = Callable[[str | None], Assessed]
"""The assessed answer of the generator (``None``) or of the named escalation target. A
target that cannot answer raises :class:`~guardrail.errors.GuardrailError`."""


def judge_question(
    judge: Judge, answer: AnswerSource, ledger: BudgetLedger, *, escalate: bool = True
) -> Verdict:
    """Judge the generator's answer and, when the policy escalates, follow its escalation
    chain (order, budgets, fallback: :func:`policies.escalation.run_chain`), each target's
    answer judged by the same judge. Every decision is counted in ``ledger``'s budgets.

    In shadow mode nothing is escalated (the decision is only recorded). With
    ``escalate=False`` an escalation is returned as decided, not run.
    """
    first = answer(None)
    decision = judge.decide(first.assessment())
    ledger.record_decision(judge.policy.name)
    if decision.action is not Action.ESCALATE or judge.shadow_mode or not escalate:
        return Verdict(first, decision, False)

    def attempt(target: str) -> tuple[Assessed, Decision]:
        try:
            assessed = answer(target)
        except Cancelled:
            raise  # nobody waits for this answer: not a failure of the target
        except GuardrailError as exc:
            raise TargetFailed(str(exc)) from None
        return assessed, judge.decide(assessed.assessment())

    chain = run_chain(decision, judge.policy, attempt, ledger, first_answered=not first.abstained)
    if chain.result is None:
        return Verdict(first, chain.decision, False)
    return Verdict(chain.result, chain.decision, True)
