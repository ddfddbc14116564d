"""The judge and the one decision path: tables of answers in, verdicts out."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pytest
from fakes import ScriptedBackend

from guardrail.assessment import FLAG_NAMES, HeuristicConfidence
from guardrail.errors import BackendError
from guardrail.judge import Assessed, Judge, judge_question, needs_probe
from guardrail.policy_runtime import PolicyRuntime
from guardrail.signals import SIGNAL_NAMES
from guardrail.types import Generation, TokenStats
from policies import Action, parse_policy
from policies.escalation import EscalationLedger
from policies.loader import PolicySet


class FixedScorer:
    """A scorer that reads the confidence from a signal of the test's choosing."""

    method = "fixed"
    features = ("mean_logprob",)

    def confidence(self, signals: Mapping[str, float | None], *, abstained: bool) -> float:
        value = signals.get("mean_logprob")
        return 0.0 if abstained or value is None else value


def policy(mode: str = "enforce") -> object:
    text = textwrap.dedent(
        f"""\
        version: 1
        name: judged
        mode: {mode}
        thresholds: {{answer: 0.6, hedge: 0.3, otherwise: escalate}}
        actions:
          escalate: {{targets: [mid, large], on_failure: defer}}
        """
    )
    return parse_policy(text, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)


def judged(p: object) -> Judge:
    return Judge(p, FixedScorer(), probe=False)  # type: ignore[arg-type]


def answer_of(name: str, confidence: float, *, abstained: bool = False) -> Assessed:
    backend = ScriptedBackend(["a", "b"], contextual=[], parametric=[], name=name)
    return Assessed(
        backend=backend,
        generation=Generation(
            text=name, stats=TokenStats.empty(), prompt_tokens=0, finish_reason="newline"
        ),
        parametric=None,
        answer=f"answer of {name}",
        abstained=abstained,
        signals={"mean_logprob": confidence},
        flags={},
        confidence=confidence,
        timings={},
    )


def source(table: Mapping[str | None, float | str], asked: list[str | None]):  # type: ignore[no-untyped-def]
    """Answers as the table says: a confidence, or 'fail' for a target that cannot answer."""

    def answer(target: str | None) -> Assessed:
        asked.append(target)
        outcome = table[target]
        if outcome == "fail":
            raise BackendError(f"{target} is down")
        return answer_of(target or "generator", float(outcome))

    return answer


@pytest.mark.parametrize(
    ("table", "asked", "action", "escalated", "model"),
    [
        # A confident first answer is answered; no target is asked.
        ({None: 0.9}, [None], "answer", False, "generator"),
        ({None: 0.4}, [None], "hedge", False, "generator"),
        # Low confidence escalates: the first target that answers is judged the same way.
        ({None: 0.1, "mid": 0.8}, [None, "mid"], "answer", True, "mid"),
        ({None: 0.1, "mid": 0.1, "large": 0.9}, [None, "mid", "large"], "answer", True, "large"),
        # A target that fails is skipped; when every target fails, on_failure decides.
        ({None: 0.1, "mid": "fail", "large": 0.7}, [None, "mid", "large"], "answer", True, "large"),
        (
            {None: 0.1, "mid": "fail", "large": "fail"},
            [None, "mid", "large"],
            "defer",
            False,
            "generator",
        ),
    ],
)
def test_judge_question_follows_the_chain(
    table: dict[str | None, float | str],
    asked: list[str | None],
    action: str,
    escalated: bool,
    model: str,
) -> None:
    seen: list[str | None] = []
    ledger = EscalationLedger()
    verdict = judge_question(judged(policy()), source(table, seen), ledger)
    assert seen == asked
    assert verdict.decision.action.value == action
    assert verdict.escalated is escalated
    assert verdict.assessed.backend.name == model


def test_a_target_answer_is_judged_by_the_same_judge() -> None:
    # The larger model's answer faces the same thresholds: a weak one is not delivered.
    verdict = judge_question(
        judged(policy()),
        source({None: 0.1, "mid": 0.35, "large": 0.2}, []),
        EscalationLedger(),
    )
    assert verdict.escalated and verdict.assessed.backend.name == "mid"
    assert verdict.decision.action is Action.HEDGE


def test_shadow_mode_and_escalate_false_run_no_target() -> None:
    for judge, escalate in ((judged(policy("shadow")), True), (judged(policy()), False)):
        seen: list[str | None] = []
        verdict = judge_question(
            judge, source({None: 0.1}, seen), EscalationLedger(), escalate=escalate
        )
        assert seen == [None]
        assert verdict.decision.action is Action.ESCALATE and not verdict.escalated


def test_every_decision_is_counted_by_the_ledger() -> None:
    class Counting(EscalationLedger):
        def __init__(self) -> None:
            super().__init__()
            self.decisions: list[str] = []

        def record_decision(self, scope: str) -> None:
            self.decisions.append(scope)
            super().record_decision(scope)

    ledger = Counting()
    for confidence in (0.9, 0.1):
        judge_question(judged(policy()), source({None: confidence, "mid": 0.9}, []), ledger)
    assert ledger.decisions == ["judged", "judged"]


def test_the_judge_computes_confidence_and_decides() -> None:
    judge = judged(policy())
    assessment = judge.assessment({"mean_logprob": 0.7}, {"knowledge_conflict"}, abstained=False)
    assert assessment.confidence == 0.7 and assessment.flags == {"knowledge_conflict"}
    assert judge.decide(assessment).action is Action.ANSWER
    traces, decision = judge.trace(judge.assessment({"mean_logprob": 0.1}, (), abstained=True))
    assert decision.action is Action.ESCALATE and traces == []


def test_the_runtime_gives_each_tenant_its_judge() -> None:
    base = parse_policy(
        textwrap.dedent(
            """\
            version: 1
            name: judged
            thresholds: {answer: 0.6, hedge: 0.3, otherwise: defer}
            """
        ),
        signal_names=SIGNAL_NAMES,
        flag_names=FLAG_NAMES,
    )
    tenant = parse_policy(
        textwrap.dedent(
            """\
            version: 1
            name: careful
            thresholds: {answer: 0.6, hedge: 0.3, otherwise: defer}
            rules:
              - name: considered-abstaining
                when: {signal: abstain_logprob, gt: -0.5}
                action: defer
            """
        ),
        signal_names=SIGNAL_NAMES,
        flag_names=FLAG_NAMES,
    )
    loaded = PolicyRuntime.from_policy(PolicySet(base, {"careful": tenant}, "<memory>")).current
    assert loaded.judge().policy is base and not loaded.judge().probe
    careful = loaded.judge("careful")
    assert careful.policy is tenant and careful.probe  # its rule reads abstain_logprob
    assert isinstance(careful.scorer, HeuristicConfidence)
    assert not loaded.judge("careful", probe=False).probe  # the setting overrides
    assert loaded.judge("unknown").policy is base
    assert needs_probe(base, FixedScorer()) is False
