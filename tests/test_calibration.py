"""Calibrators (contract, artifact round trip, branches) and risk control (the guarantee
holds in repeated draws where the true error rate is known)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from guardrail.calibration import (
    ABSTAINED,
    DEFAULT_FEATURES,
    IsotonicCalibrator,
    LogisticCalibrator,
    NotFittedError,
    load_calibrator,
)
from guardrail.errors import ConfigError
from guardrail.evaluation.metrics import auroc
from guardrail.evaluation.report import DIRECTIONS
from guardrail.risk import (
    binomial_pvalue,
    control_risk,
    hoeffding_bentkus_pvalue,
    min_answered,
    realised,
    start_answered,
)
from guardrail.signals import SIGNAL_NAMES


def synthetic(n: int, seed: int) -> tuple[list[dict[str, float | None]], list[bool]]:
    """Answered rows whose correctness follows mean_logprob; abstentions right 80% of the time."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, float | None]] = []
    labels: list[bool] = []
    for _ in range(n):
        if rng.random() < 0.25:
            rows.append({"mean_logprob": float(rng.normal()), "cg_mean": None, ABSTAINED: 1.0})
            labels.append(bool(rng.random() < 0.8))
        else:
            x = float(rng.normal())
            rows.append({"mean_logprob": x, "cg_mean": float(rng.normal()), ABSTAINED: 0.0})
            labels.append(bool(rng.random() < 1 / (1 + math.exp(-3 * x))))
    return rows, labels


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_fit_returns_self_and_learns_the_signal(cls: type[LogisticCalibrator]) -> None:
    rows, labels = synthetic(600, 0)
    calibrator = cls(("mean_logprob", "cg_mean"))
    assert calibrator.fit(rows, labels) is calibrator
    test_rows, test_labels = synthetic(600, 1)
    probs = calibrator.predict_proba(test_rows)
    assert probs.shape == (600,)
    assert ((probs >= 0) & (probs <= 1)).all()
    answered = np.array([r[ABSTAINED] == 0.0 for r in test_rows])
    assert auroc(probs[answered], np.array(test_labels)[answered]) > 0.75
    # The abstained branch learned its base rate (about 0.8), whatever mean_logprob says.
    assert probs[~answered].mean() == pytest.approx(0.8, abs=0.08)


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_unfitted_use_raises(cls: type[LogisticCalibrator]) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        cls().predict_proba([{"mean_logprob": 0.0, ABSTAINED: 0.0}])
    with pytest.raises(NotFittedError):
        cls().save("never-written.json")


@pytest.mark.parametrize("cls", [LogisticCalibrator, IsotonicCalibrator])
def test_artifact_round_trip(cls: type[LogisticCalibrator], tmp_path: Path) -> None:
    rows, labels = synthetic(400, 2)
    calibrator = cls(("mean_logprob", "cg_mean")).fit(rows, labels)
    calibrator.metadata = {"fitted_on": "synthetic"}
    path = calibrator.save(tmp_path / "cal.json")
    data = json.loads(path.read_text())
    assert data["format"] == "guardrail-calibrator" and data["kind"] == cls.kind
    loaded = load_calibrator(path)
    assert type(loaded) is cls
    assert loaded.metadata == {"fitted_on": "synthetic"}
    test_rows, _ = synthetic(50, 3)
    assert loaded.predict_proba(test_rows) == pytest.approx(calibrator.predict_proba(test_rows))
    one = test_rows[0]
    assert loaded.confidence(one, abstained=bool(one[ABSTAINED])) == pytest.approx(
        float(calibrator.predict_proba([one])[0])
    )


def test_a_branch_with_one_class_predicts_its_smoothed_rate() -> None:
    rows = [{"mean_logprob": float(i), ABSTAINED: 0.0} for i in range(20)]
    rows += [{"mean_logprob": 0.0, ABSTAINED: 1.0}] * 3
    labels = [i % 2 == 0 for i in range(20)] + [True, True, True]
    calibrator = LogisticCalibrator(("mean_logprob",)).fit(rows, labels)
    assert calibrator.confidence({"mean_logprob": 0.0}, abstained=True) == pytest.approx(4 / 5)


def test_missing_values_take_the_training_mean() -> None:
    rows, labels = synthetic(300, 4)
    calibrator = LogisticCalibrator(("mean_logprob", "cg_mean")).fit(rows, labels)
    mean = calibrator.branches_["answered"].mean[1]  # type: ignore[index]
    with_none = calibrator.confidence({"mean_logprob": 0.3, "cg_mean": None}, abstained=False)
    with_mean = calibrator.confidence({"mean_logprob": 0.3, "cg_mean": mean}, abstained=False)
    assert with_none == pytest.approx(with_mean)


def test_a_signal_that_is_missing_for_a_reason_is_used_through_its_indicator(
    tmp_path: Path,
) -> None:
    """'overlap' is missing exactly when the answer is wrong (as answer_sentence_overlap is
    missing when no passage sentence holds the answer): mean filling alone hides that."""
    rng = np.random.default_rng(7)
    rows: list[dict[str, float | None]] = []
    labels: list[bool] = []
    for _ in range(400):
        right = bool(rng.random() < 0.5)
        overlap = float(rng.uniform(0.2, 1.0)) if right else None
        rows.append({"overlap": overlap, "noise": float(rng.normal()), ABSTAINED: 0.0})
        labels.append(right)
    calibrator = LogisticCalibrator(("overlap", "noise")).fit(rows[:200], labels[:200])
    branch = calibrator.branches_["answered"]  # type: ignore[index]
    assert branch.missing == [0]  # an indicator for 'overlap', none for 'noise'
    assert branch.C in (0.01, 0.03, 0.1, 0.3, 1.0)
    held = calibrator.predict_proba(rows[200:])
    assert auroc(held, labels[200:]) > 0.95
    again = load_calibrator(calibrator.save(tmp_path / "c.json"))
    assert again.predict_proba(rows[200:]) == pytest.approx(held)


def test_c_is_fixed_or_chosen() -> None:
    rows, labels = synthetic(300, 5)
    fixed = LogisticCalibrator(("mean_logprob",), C=0.5).fit(rows, labels)
    assert fixed.branches_["answered"].C == 0.5  # type: ignore[index]
    with pytest.raises(ValueError, match="C must be a positive number or 'auto'"):
        LogisticCalibrator(("mean_logprob",), C=0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "other"}', "not a guardrail calibrator"),
        ('{"format": "guardrail-calibrator", "version": 9}', "version 9"),
        (
            '{"format": "guardrail-calibrator", "version": 1, "kind": "forest"}',
            "unknown calibrator",
        ),
        (
            '{"format": "guardrail-calibrator", "version": 1, "kind": "logistic",'
            ' "features": ["a"], "branches": {"answered": {"mean": [0], "scale": [1],'
            ' "coef": [1, 2]}, "abstained": {"constant": 0.5}}}',
            "does not match",
        ),
    ],
)
def test_bad_artifacts_are_refused(content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_calibrator(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibrator(tmp_path / "missing.json")


# ------------------------------------------------------------------------------ risk control


def test_pvalues_by_hand() -> None:
    assert binomial_pvalue(0, 22, 0.1) == pytest.approx(0.9**22)
    assert binomial_pvalue(1, 2, 0.5) == pytest.approx(0.75)
    assert binomial_pvalue(3, 3, 0.1) == 1.0
    for errors, n in [(0, 30), (2, 50), (10, 60)]:
        assert hoeffding_bentkus_pvalue(errors, n, 0.1) >= binomial_pvalue(errors, n, 0.1) - 1e-12
    assert min_answered(0.1, 0.1) == 22
    assert start_answered(0.1, 0.1) > 22


def test_a_perfect_ranking_is_certified_at_full_coverage_of_the_right_answers() -> None:
    scores = np.linspace(0, 1, 200)
    correct = scores >= 0.5
    result = control_risk(scores, correct, target_error=0.1, delta=0.1)
    assert result.feasible and result.threshold is not None
    coverage, error, _ = realised(scores, correct, result.threshold)
    assert error <= 0.1
    assert coverage >= 0.5


def test_infeasible_targets_are_reported_not_pretended() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    correct = rng.random(300) < 0.5  # the scores carry no information; half are wrong
    result = control_risk(scores, correct, target_error=0.05, delta=0.1)
    assert not result.feasible
    assert result.threshold is None and result.coverage == 0.0
    assert "defer everything" in result.message


def test_the_guarantee_holds_in_repeated_draws() -> None:
    # Score s ~ U(0, 1) and P(wrong | s) = (1 - s)^2 / 2, so the true error among answered
    # at threshold t is (1 - t)^2 / 6, which reaches alpha = 0.1 at t = 0.225. The chosen
    # threshold must keep it <= alpha in at least 1 - delta of the calibration draws (an
    # infeasible draw answers nothing, which is no violation), allowing binomial slack.
    alpha, delta, draws = 0.1, 0.1, 400
    rng = np.random.default_rng(7)
    violations, feasible = 0, 0
    thresholds = []
    for _ in range(draws):
        s = rng.random(300)
        correct = rng.random(300) >= (1 - s) ** 2 / 2
        result = control_risk(s, correct, target_error=alpha, delta=delta)
        if result.threshold is None:
            continue
        feasible += 1
        thresholds.append(result.threshold)
        violations += (1 - result.threshold) ** 2 / 6 > alpha
    assert violations / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    # ... and it is useful: feasible in most draws, well below the most conservative end.
    assert feasible / draws > 0.9
    assert np.median(thresholds) < 0.6


def test_abstentions_are_never_answered() -> None:
    scores = np.array([0.99] * 30 + [0.5] * 30)
    correct = np.array([False] * 30 + [True] * 30)
    eligible = np.array([False] * 30 + [True] * 30)  # the confident wrong ones abstained
    result = control_risk(scores, correct, target_error=0.1, delta=0.1, eligible=eligible)
    assert result.feasible and result.answered == 30 and result.errors == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_error": 0.0, "delta": 0.1}, "target_error"),
        ({"target_error": 0.1, "delta": 1.0}, "delta"),
        ({"target_error": 0.1, "delta": 0.1, "method": "magic"}, "unknown method"),
    ],
)
def test_bad_risk_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        control_risk([0.5], [True], **kwargs)  # type: ignore[arg-type]


def test_every_signal_has_a_report_direction_and_every_feature_is_a_signal() -> None:
    # A signal without an a-priori direction would silently drop out of the single-signal
    # comparison that the calibrated confidence is measured against.
    assert set(DIRECTIONS) == SIGNAL_NAMES
    assert set(DEFAULT_FEATURES) <= SIGNAL_NAMES
    assert all(direction in (-1, 1) for direction in DIRECTIONS.values())
