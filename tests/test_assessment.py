"""Assessment: abstention detection, flag rules and the heuristic confidence, as tables."""

from __future__ import annotations

import math
from typing import Any

import pytest

from guardrail.assessment import (
    FLAG_NAMES,
    HEURISTIC_METHOD,
    FlagRules,
    HeuristicConfidence,
    is_abstention,
)

# ---------------------------------------------------------------- is_abstention


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("unanswerable", True),
        ("Unanswerable.", True),
        ("UNANSWERABLE", True),
        ("unanswerable from the given context", True),
        ("I don't know", True),
        ("i do not know.", True),
        ("Unknown", True),
        ("No answer", True),
        ("N/A", True),
        ("Not mentioned.", True),
        ("Not enough information", True),
        ("", True),
        ("   ", True),
        ("Paris", False),
        ("1889", False),
        ("Pierre Curie and Henri Becquerel", False),
        ("The unknown soldier", False),
        ("I know", False),
        ("answerable", False),
        # Chat models decline in a sentence rather than the one word their prompt asks for.
        ("The passages do not mention when the war ended.", True),
        ("The provided context doesn't specify the date.", True),
        ("There is no information about this in the documents.", True),
        ("This information is not provided in the passages.", True),
        ("The answer is not in the passages.", True),
        ("It cannot be determined from the given text.", True),
        ("I'm sorry, but I couldn't find that in the documents.", True),
        ("Based on the passages, I cannot determine the year.", True),
        ("I don't have enough information to answer.", True),
        ("Unfortunately, the passage does not provide the answer.", True),
        ("Not specified.", True),
        # Answers that merely contain a negation, or those words, are answers.
        ("Not until 1990", False),
        ("It is not Paris but Lyon", False),
        ("There is no king; it is a republic", False),
        ("The text was written in 1850", False),
        ("Based on the passages, Paris.", False),
        ("Documents signed in 1648", False),
        ("No one", False),
        ("I cannot stress enough: Paris", False),
    ],
)
def test_is_abstention(answer: str, expected: bool) -> None:
    assert is_abstention(answer) is expected


# ---------------------------------------------------------------- FlagRules


def flag_set(
    *,
    cg_mean: float | None = 0.5,
    agreement: float | None = 1.0,
    parametric_entropy: float | None = 0.5,
    abstained: bool = False,
    has_passages: bool = True,
    rules: FlagRules | None = None,
) -> dict[str, str]:
    return (rules or FlagRules()).flags(
        abstained=abstained,
        signals={"cg_mean": cg_mean, "parametric_agreement": agreement},
        parametric_first_entropy=parametric_entropy,
        has_passages=has_passages,
    )


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"),
    [
        ("agreeing and more certain", {}, set()),
        ("conflict by Confidence Gain only", {"cg_mean": -1.5}, {"knowledge_conflict"}),
        (
            "conflict by parametric agreement only",
            {"agreement": 0.0, "parametric_entropy": 0.4},
            {"knowledge_conflict"},
        ),
        (
            "memory empty: low agreement but high parametric entropy",
            {"agreement": 0.0, "parametric_entropy": 3.5},
            set(),
        ),
        (
            "both conditions",
            {"cg_mean": -2.0, "agreement": 0.25, "parametric_entropy": 0.1},
            {"knowledge_conflict"},
        ),
        ("Confidence Gain exactly at the threshold is no conflict", {"cg_mean": -1.0}, set()),
        (
            "agreement exactly at the threshold is no conflict",
            {"agreement": 0.5, "parametric_entropy": 0.1},
            set(),
        ),
        (
            "parametric entropy exactly at the threshold is no conflict",
            {"agreement": 0.0, "parametric_entropy": 2.0},
            set(),
        ),
        (
            "no parametric pass: nothing to compare",
            {"cg_mean": None, "agreement": None, "parametric_entropy": None},
            set(),
        ),
        (
            "agreement without a parametric entropy is not enough",
            {"agreement": 0.0, "parametric_entropy": None},
            set(),
        ),
        (
            "abstention suppresses the conflict check",
            {"abstained": True, "cg_mean": -3.0, "agreement": 0.0, "parametric_entropy": 0.1},
            {"model_abstained"},
        ),
        ("no passages", {"has_passages": False}, {"no_passages"}),
        (
            "no passages and an abstention",
            {"has_passages": False, "abstained": True},
            {"no_passages", "model_abstained"},
        ),
        (
            "no passages and a conflict",
            {"has_passages": False, "cg_mean": -1.5},
            {"no_passages", "knowledge_conflict"},
        ),
    ],
)
def test_flag_rules(case: str, kwargs: dict[str, Any], expected: set[str]) -> None:
    raised = flag_set(**kwargs)
    assert set(raised) == expected, case
    assert set(raised) <= FLAG_NAMES
    assert all(detail for detail in raised.values())


def test_conflict_details_name_the_condition_that_fired() -> None:
    by_gain = flag_set(cg_mean=-1.5)["knowledge_conflict"]
    assert "Confidence Gain -1.50 < -1" in by_gain
    assert "agreement" not in by_gain
    by_agreement = flag_set(agreement=0.0, parametric_entropy=0.4)["knowledge_conflict"]
    assert "parametric agreement 0.00 < 0.5" in by_agreement
    assert "entropy 0.40 < 2 nats" in by_agreement
    assert "Confidence Gain" not in by_agreement
    both = flag_set(cg_mean=-2.0, agreement=0.0, parametric_entropy=0.4)["knowledge_conflict"]
    assert "Confidence Gain" in both and "parametric agreement" in both


def test_flag_rules_thresholds_are_configurable() -> None:
    strict = FlagRules(cg_threshold=0.0, agreement_threshold=0.9, parametric_entropy_threshold=5)
    assert set(flag_set(cg_mean=-0.1, rules=strict)) == {"knowledge_conflict"}
    assert set(flag_set(agreement=0.8, parametric_entropy=3.5, rules=strict)) == {
        "knowledge_conflict"
    }
    assert flag_set(cg_mean=-0.1) == {}


# ---------------------------------------------------------------- HeuristicConfidence


@pytest.mark.parametrize(
    ("signals", "abstained", "expected"),
    [
        ({"mean_logprob": math.log(0.8), "answer_in_passages": 1.0}, False, 0.8),
        ({"mean_logprob": math.log(0.8), "answer_in_passages": 0.0}, False, 0.4),
        ({"mean_logprob": math.log(0.8), "answer_in_passages": None}, False, 0.4),
        ({"mean_logprob": math.log(0.8)}, False, 0.4),
        ({"mean_logprob": math.log(0.3), "answer_in_passages": 1.0}, False, 0.3),
        ({"mean_logprob": math.log(0.9), "answer_in_passages": 1.0}, True, 0.0),
        ({"mean_logprob": None, "answer_in_passages": 1.0}, False, 0.0),
        ({}, False, 0.0),
        ({"mean_logprob": -50.0, "answer_in_passages": 1.0}, False, math.exp(-50.0)),
        # Clipped to [0, 1] even when a backend reports an impossible positive log-probability.
        ({"mean_logprob": 0.5, "answer_in_passages": 1.0}, False, 1.0),
    ],
)
def test_heuristic_confidence(
    signals: dict[str, float | None], abstained: bool, expected: float
) -> None:
    value = HeuristicConfidence().confidence(signals, abstained=abstained)
    assert value == pytest.approx(expected)
    assert 0.0 <= value <= 1.0


def test_heuristic_confidence_names_its_method() -> None:
    assert HeuristicConfidence().method == HEURISTIC_METHOD
    assert "uncalibrated" in HEURISTIC_METHOD
