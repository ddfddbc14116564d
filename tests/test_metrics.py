"""Metric functions against values computed by hand, and the SQuAD scoring rules."""

from __future__ import annotations

import math

import pytest

from guardrail.evaluation import metrics
from guardrail.evaluation.scoring import (
    answer_correct,
    best_f1,
    exact_match,
    outcome_correct,
    token_f1,
)


def test_auroc_of_the_classic_four_point_example() -> None:
    # Positives 0.35 and 0.8; negatives 0.1 and 0.4: 3 of the 4 pairs are ordered right.
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)


def test_auroc_counts_ties_as_one_half_and_extremes() -> None:
    assert metrics.auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert metrics.auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert metrics.auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert math.isnan(metrics.auroc([1, 2], [1, 1]))


def test_risk_coverage_and_aurc_by_hand() -> None:
    # Most confident first: right, wrong, right -> risks 0, 1/2, 1/3.
    coverage, risk = metrics.risk_coverage([0.9, 0.8, 0.7], [1, 0, 1])
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1])
    assert risk.tolist() == pytest.approx([0, 0.5, 1 / 3])
    assert metrics.aurc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx((0 + 0.5 + 1 / 3) / 3)


def test_tied_scores_share_their_errors() -> None:
    # One tie group of two (one right, one wrong): both coverages see the mean error.
    _, risk = metrics.risk_coverage([0.5, 0.5], [1, 0])
    assert risk.tolist() == pytest.approx([0.5, 0.5])


def test_prr_by_hand() -> None:
    # random AURC 1/3, oracle (1/3)/3 = 1/9, this ranking 5/18: (1/3 - 5/18) / (1/3 - 1/9).
    assert metrics.prr([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.25)
    assert metrics.prr([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(1.0)


def test_ece_by_hand() -> None:
    # Bin [0.2, 0.3): confidence 0.2, accuracy 0.5; bin [0.9, 1]: 0.9 vs 1.0.
    value = metrics.ece([0.2, 0.2, 0.9, 0.9], [0, 1, 1, 1])
    assert value == pytest.approx((2 * 0.3 + 2 * 0.1) / 4)
    table = metrics.reliability([0.2, 0.2, 0.9, 0.9], [0, 1, 1, 1])
    assert [b.count for b in table] == [0, 0, 2, 0, 0, 0, 0, 0, 0, 2]
    assert metrics.ece([1.0, 0.0], [1, 0]) == 0.0


def test_selective_accuracy_and_abstention_precision_recall() -> None:
    assert metrics.selective_accuracy([0.9, 0.8, 0.7], [1, 0, 1], 2 / 3) == pytest.approx(0.5)
    assert metrics.selective_accuracy([0.9, 0.8, 0.7], [1, 0, 1], 0.1) == 1.0
    precision, recall = metrics.abstention_precision_recall(
        answered=[True, False, False, True], unanswerable=[False, True, False, True]
    )
    assert (precision, recall) == (0.5, 0.5)


def test_bad_metric_input_is_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        metrics.auroc([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.aurc([float("nan")], [1])
    with pytest.raises(ValueError, match="coverage"):
        metrics.selective_accuracy([0.1], [1], 0.0)
    with pytest.raises(ValueError, match="probabilities"):
        metrics.ece([1.5], [1])


def test_squad_f1_and_exact_match() -> None:
    assert token_f1("the Eiffel Tower", "Eiffel Tower") == 1.0
    assert token_f1("in 1889", "1889") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert best_f1("Paris", ["Lyon", "paris!"]) == 1.0
    assert exact_match("The Seine", ["Seine"])
    assert not exact_match("Seine river", ["Seine"])


def test_correctness_labels() -> None:
    assert answer_correct("in 1889", ["1889"], unanswerable=False)  # F1 0.67 >= 0.5
    assert not answer_correct("1889", ["1889"], unanswerable=True)
    assert not answer_correct("the summer of 1889 in Paris", ["1889"], unanswerable=False)
    assert outcome_correct(answered=False, prediction="", answers=[], unanswerable=True)
    assert not outcome_correct(answered=False, prediction="", answers=["x"], unanswerable=False)
