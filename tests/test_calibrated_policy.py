"""The policy ``guardrail calibrate`` writes: its thresholds are the certified risk target and
its rules are the base policy's flag rules (conditions on flags only), in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from guardrail.assessment import FLAG_NAMES
from guardrail.evaluation.calibrate import calibrated_policy, flag_rules
from guardrail.pipeline import load_policy_setting
from guardrail.risk import RiskControl
from guardrail.signals import SIGNAL_NAMES
from policies import Policy
from policies.loader import parse_policy

CALIBRATED = Path(__file__).parent.parent / "policies" / "calibrated"

# The two rules every calibrated policy had, written out by hand before they were derived.
BALANCED_FLAG_RULES = [
    {
        "name": "injected-answer",
        "when": {"flag": "injected_answer"},
        "action": "defer",
        "reason": "the answer comes only from passage text that tries to instruct the model",
    },
    {
        "name": "model-abstained",
        "when": {"flag": "model_abstained"},
        "action": "defer",
        "reason": "the model itself found no answer in the passages",
    },
    {
        "name": "no-passages",
        "when": {"flag": "no_passages"},
        "action": "defer",
        "reason": "no passage was retrieved for this question",
    },
]

BASE = """\
version: 1
name: base
thresholds: {answer: 0.6, hedge: 0.3, otherwise: defer}
rules:
  - name: weak-retrieval
    when: {signal: retrieval_top_score, lt: 0.35}
    action: defer
    reason: no retrieved passage is close to the question
  - name: conflict-with-passages
    when: {all: [{flag: knowledge_conflict}, {not: {flag: no_passages}}]}
    action: escalate
    reason: the passages disagree with the model
  - name: confident-conflict
    when: {all: [{flag: knowledge_conflict}, {signal: confidence, ge: 0.3}]}
    action: hedge
  - name: no-passages
    when: {flag: no_passages}
    action: defer
"""


def parse(text: str) -> Policy:
    return parse_policy(text, signal_names=SIGNAL_NAMES, flag_names=FLAG_NAMES)


def risk(target: float) -> RiskControl:
    return RiskControl(
        target_error=target,
        delta=0.1,
        method="binomial",
        feasible=True,
        threshold=0.6,
        n_calibration=100,
        answered=60,
        errors=3,
        coverage=0.6,
        tested=4,
        message=f"answer when confidence >= 0.6000: error <= {target:.0%} certified",
    )


def calibrated(base: Policy) -> dict[str, object]:
    return calibrated_policy(
        base,
        name="cal",
        calibrator_file="cal.calibrator.json",
        answer=risk(0.1),
        hedge=risk(0.2),
        fitted_on="test data",
    )


def dumped(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=100)


def test_from_balanced_the_rules_are_its_flag_rules() -> None:
    rules = calibrated(load_policy_setting("balanced"))["rules"]
    # Compared as YAML text: the same names, conditions, actions and reasons, in the same
    # order and with the same key order, so the written policy file is unchanged.
    assert dumped(rules) == dumped(BALANCED_FLAG_RULES)


@pytest.mark.parametrize("path", sorted(CALIBRATED.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_calibrated_policies_hold_the_derived_rules(path: Path) -> None:
    written = yaml.safe_load(path.read_text(encoding="utf-8"))["rules"]
    assert dumped(written) == dumped(calibrated(load_policy_setting("balanced"))["rules"])


def test_flag_rules_are_kept_and_signal_rules_are_not() -> None:
    base = parse(BASE)
    kept = flag_rules(base)
    # weak-retrieval compares a signal and confident-conflict the confidence: both dropped.
    assert [rule.name for rule in kept] == ["conflict-with-passages", "no-passages"]
    rules = calibrated(base)["rules"]
    assert rules == [
        {
            "name": "conflict-with-passages",
            "when": {"all": [{"flag": "knowledge_conflict"}, {"not": {"flag": "no_passages"}}]},
            "action": "escalate",
            "reason": "the passages disagree with the model",
        },
        {"name": "no-passages", "when": {"flag": "no_passages"}, "action": "defer"},
    ]
    # The written rules read back as the same rules.
    policy = parse(
        dumped(
            {
                "version": 1,
                "name": "cal",
                "thresholds": {"answer": 0.6, "hedge": 0.3, "otherwise": "defer"},
                "rules": rules,
            }
        )
    )
    assert policy.rules == tuple(kept)


def test_a_base_policy_without_flag_rules_gives_none() -> None:
    base = parse(BASE.split("  - name: conflict-with-passages")[0])
    assert flag_rules(base) == []
    assert calibrated(base)["rules"] == []
