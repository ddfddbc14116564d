"""Escalation chains as tables: targets in order, budgets, failures and the fallback."""

from __future__ import annotations

import textwrap

import pytest

from guardrail.cancel import Cancelled
from policies import Action, Decision, Policy, parse_policy
from policies.escalation import ChainResult, EscalationLedger, TargetFailed, run_chain
from policies.schema import Budget, Target

SIGNALS = frozenset({"cg_mean"})
FLAGS = frozenset({"model_abstained"})


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain_policy(escalate: str) -> Policy:
    text = textwrap.dedent(
        """\
        version: 1
        name: chain
        thresholds: {answer: 0.6, hedge: 0.3, otherwise: escalate}
        actions:
          escalate:
        """
    ) + textwrap.indent(textwrap.dedent(escalate), "    ")
    return parse_policy(text, signal_names=SIGNALS, flag_names=FLAGS)


FIRST = Decision(Action.ESCALATE, "threshold:otherwise", ("low confidence",), "chain", "h")


def attempt_from(outcomes: dict[str, str], log: list[str]):  # type: ignore[no-untyped-def]
    """Targets behave as the table says: an action they end with, or 'fail'."""

    def attempt(target: str) -> tuple[str, Decision]:
        log.append(target)
        outcome = outcomes[target]
        if outcome == "fail":
            raise TargetFailed(f"{target} is down")
        action = Action(outcome)
        return f"answer of {target}", Decision(
            action, "r", (f"{target} said {outcome}",), "chain", "h"
        )

    return attempt


TWO_TARGETS = """\
targets: [mid, large]
on_failure: {on_failure}
"""


@pytest.mark.parametrize(
    ("outcomes", "on_failure", "first_answered", "tried", "action", "target"),
    [
        ({"mid": "answer", "large": "answer"}, "defer", True, ["mid"], "answer", "mid"),
        ({"mid": "hedge", "large": "answer"}, "defer", True, ["mid"], "hedge", "mid"),
        ({"mid": "fail", "large": "answer"}, "defer", True, ["mid", "large"], "answer", "large"),
        ({"mid": "defer", "large": "answer"}, "defer", True, ["mid", "large"], "answer", "large"),
        ({"mid": "escalate", "large": "hedge"}, "defer", True, ["mid", "large"], "hedge", "large"),
        ({"mid": "fail", "large": "fail"}, "defer", True, ["mid", "large"], "defer", None),
        ({"mid": "defer", "large": "fail"}, "defer", True, ["mid", "large"], "defer", None),
        ({"mid": "fail", "large": "defer"}, "hedge", True, ["mid", "large"], "hedge", None),
        ({"mid": "fail", "large": "defer"}, "hedge", False, ["mid", "large"], "defer", None),
    ],
)
def test_chain_table(
    outcomes: dict[str, str],
    on_failure: str,
    first_answered: bool,
    tried: list[str],
    action: str,
    target: str | None,
) -> None:
    policy = chain_policy(TWO_TARGETS.format(on_failure=on_failure))
    log: list[str] = []
    result: ChainResult[str] = run_chain(
        FIRST,
        policy,
        attempt_from(outcomes, log),
        EscalationLedger(),
        first_answered=first_answered,
    )
    assert log == tried
    assert result.decision.action.value == action
    assert result.target == target
    assert result.decision.policy_name == "chain"
    if target is None:
        assert result.result is None
        assert result.decision.rule == "escalation:exhausted"
        # The reasons tell what happened to every target, after the first decision's.
        assert result.decision.reasons[0] == "low confidence"
        assert all(any(f"'{t}'" in r for r in result.decision.reasons) for t in tried)
    else:
        assert result.result == f"answer of {target}"
        assert result.decision.reasons[0].startswith(f"escalated to {target}: low confidence")


def test_failed_target_reason_names_the_failure() -> None:
    policy = chain_policy(TWO_TARGETS.format(on_failure="defer"))
    result = run_chain(
        FIRST,
        policy,
        attempt_from({"mid": "fail", "large": "fail"}, []),
        EscalationLedger(),
        first_answered=True,
    )
    assert (
        "escalation target 'mid' failed: mid is down (its budget was not spent)"
        in result.decision.reasons
    )
    assert result.decision.reasons[-1] == (
        "no escalation target produced an answer the policy accepts"
    )


def test_per_minute_budget_skips_to_the_next_target_and_recovers() -> None:
    policy = chain_policy(
        """\
        targets:
          - {name: mid, budget: {per_minute: 2}}
          - large
        """
    )
    clock = Clock()
    ledger = EscalationLedger(clock)
    outcomes = {"mid": "answer", "large": "answer"}
    served = []
    for _ in range(3):
        ledger.record_decision("chain")
        served.append(
            run_chain(FIRST, policy, attempt_from(outcomes, []), ledger, first_answered=True)
        )
    assert [r.target for r in served] == ["mid", "mid", "large"]
    assert any(
        "target 'mid' is over its budget: 2 escalations in the last minute (limit 2 per minute)"
        in reason
        for reason in served[2].decision.reasons
    )
    clock.now += 61
    ledger.record_decision("chain")
    again = run_chain(FIRST, policy, attempt_from(outcomes, []), ledger, first_answered=True)
    assert again.target == "mid"


def test_share_budget_of_the_chain_falls_back_when_spent() -> None:
    policy = chain_policy(
        """\
        targets: [mid]
        budget: {max_share: 0.25}
        on_failure: hedge
        """
    )
    ledger = EscalationLedger(Clock())
    results = []
    for _ in range(8):
        ledger.record_decision("chain")
        results.append(
            run_chain(
                FIRST, policy, attempt_from({"mid": "answer"}, []), ledger, first_answered=True
            )
        )
    # ceil(0.25 * n) escalations are allowed after n decisions: n=1 -> 1, n=5 -> 2.
    escalated = [r.target == "mid" for r in results]
    assert escalated == [True, False, False, False, True, False, False, False]
    skipped = results[1].decision
    assert skipped.action is Action.HEDGE and skipped.rule == "escalation:exhausted"
    assert any("the escalation chain is over its budget" in r for r in skipped.reasons)


def test_budgets_are_counted_per_policy() -> None:
    ledger = EscalationLedger(Clock())
    target = Target(name="mid", budget=Budget(per_minute=1))
    assert ledger.acquire("a", target, None) is None
    assert ledger.acquire("a", target, None) is not None
    assert ledger.acquire("b", target, None) is None


def test_a_share_budget_forgets_decisions_outside_its_window() -> None:
    clock = Clock()
    ledger = EscalationLedger(clock)
    budget = Budget(max_share=0.5, window_seconds=100)
    target = Target(name="mid")
    for _ in range(10):
        ledger.record_decision("p")
    assert ledger.acquire("p", target, budget) is None
    clock.now += 200  # the ten decisions and the escalation leave the window
    ledger.record_decision("p")
    assert ledger.acquire("p", target, budget) is None
    assert ledger.acquire("p", target, budget) is not None


def test_a_short_window_does_not_hide_a_long_windows_decisions() -> None:
    """A per-minute target budget and a share of an hour on the chain: checking the first
    must not forget the decisions the second counts."""
    clock = Clock()
    ledger = EscalationLedger(clock)
    for _ in range(1000):
        ledger.record_decision("p")
        clock.now += 3.0  # 1000 decisions over 50 minutes
    target = Target(name="mid", budget=Budget(per_minute=100, window_seconds=60))
    chain = Budget(max_share=0.2)  # 20% of 1000 decisions in the hour: 200
    granted = 0
    for _ in range(250):
        if ledger.acquire("p", target, chain) is None:
            granted += 1
        clock.now += 0.5 if granted % 90 else 60.0  # stay under 100 a minute
    assert granted == 200


def mid_once_a_minute() -> Policy:
    """A chain whose first target may serve one escalation a minute."""
    return chain_policy(
        """\
        targets:
          - {name: mid, budget: {per_minute: 1}}
          - large
        """
    )


def served_by(policy: Policy, ledger: EscalationLedger) -> str | None:
    """The target that serves the next escalation when every target would answer."""
    chain = attempt_from({"mid": "answer", "large": "answer"}, [])
    return run_chain(FIRST, policy, chain, ledger, first_answered=True).target


def test_a_failed_target_does_not_spend_its_budget() -> None:
    """A target that fails without answering gives its escalation back: the budget pays for
    answers tried, not for targets that could not run."""
    policy = mid_once_a_minute()
    ledger = EscalationLedger(Clock())
    failed = run_chain(
        FIRST,
        policy,
        attempt_from({"mid": "fail", "large": "defer"}, []),
        ledger,
        first_answered=True,
    )
    assert any("(its budget was not spent)" in r for r in failed.decision.reasons)
    assert served_by(policy, ledger) == "mid"  # its one escalation a minute is still there
    assert served_by(policy, ledger) == "large"  # now it is spent


def test_a_cancelled_escalation_gives_its_budget_back_and_ends_the_chain() -> None:
    """A request cancelled during an escalation (its client left) is not a failed target: the
    chain stops at once, and the target's escalation is given back."""
    policy = mid_once_a_minute()
    ledger = EscalationLedger(Clock())
    tried: list[str] = []

    def cancelled(target: str) -> tuple[str, Decision]:
        tried.append(target)
        raise Cancelled("cancelled: the client disconnected")

    with pytest.raises(Cancelled):
        run_chain(FIRST, policy, cancelled, ledger, first_answered=True)
    assert tried == ["mid"]  # the next target was not tried for a gone client
    assert served_by(policy, ledger) == "mid"  # its one escalation a minute is still there
