"""The calibration workflow: fit a calibrator, certify its thresholds, write the policy.

The calibration split is cut in two by paragraph (``fit_and_certify_parts``): a calibrator is
fitted on one part (``fit_calibrators``) and its answer and hedge thresholds are certified by
risk control on the other (``risk_controls``). ``guardrail calibrate`` runs ``calibrate`` and
``write_calibrated_policy``; ``guardrail eval --fit-split`` runs ``fit_and_certify``.
"""

from __future__ import annotations

import datetime
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guardrail.calibration import CALIBRATORS, CG_FEATURES, DEFAULT_FEATURES, LogisticCalibrator
from guardrail.errors import ConfigError
from guardrail.evaluation.datasets import EvalItem
from guardrail.evaluation.report import observation
from guardrail.evaluation.runner import Record
from guardrail.risk import RiskControl, control_risk
from policies import Policy
from policies.conditions import FlagCondition
from policies.schema import Rule

DEFAULT_FIT_SHARE = 0.5


def fit_groups(
    items: Sequence[EvalItem], seed: int, fit_share: float = DEFAULT_FIT_SHARE
) -> set[str]:
    """The groups (paragraphs) of the calibration split the calibrator is fitted on: a
    seeded ``fit_share`` of them; the others certify its thresholds. Known from the items
    alone, so a cut that leaves a part empty is refused before any model runs."""
    if not 0 < fit_share < 1:
        raise ConfigError(
            f"fit_share must be between 0 and 1 (exclusive), got {fit_share}: it is the "
            "share of the calibration split the calibrator is fitted on, the rest certifies "
            "its threshold"
        )
    groups = sorted({item.group or item.id for item in items})
    random.Random(f"certify:{seed}").shuffle(groups)
    # The small epsilon keeps float error from cutting one short (100 * 0.29 = 28.999...).
    chosen = set(groups[: math.floor(len(groups) * fit_share + 1e-9)])
    if not chosen or len(chosen) == len(groups):
        raise ConfigError(
            f"{len(items)} calibration questions from {len(groups)} paragraphs cannot be cut "
            f"into a part to fit on and a part to certify on at a fit share of {fit_share}; "
            "use a larger --n or a --fit-share nearer 0.5"
        )
    return chosen


def fit_and_certify_parts(
    items: Sequence[EvalItem],
    records: Sequence[Record],
    seed: int,
    fit_share: float = DEFAULT_FIT_SHARE,
) -> tuple[list[Record], list[Record]]:
    """Cut the calibration records in two by group (paragraph), seeded (``fit_groups``):
    the calibrator is fitted on the first part and its threshold certified on the second.
    A threshold certified on the data its calibrator was fitted on would see optimistic,
    in-sample scores, and the guarantee would not hold."""
    chosen = fit_groups(items, seed, fit_share)
    pairs = list(zip(items, records, strict=True))
    fit = [r for i, r in pairs if (i.group or i.id) in chosen]
    certify = [r for i, r in pairs if (i.group or i.id) not in chosen]
    return fit, certify


def fit_calibrators(
    records: Sequence[Record], kinds: Sequence[str], *, ablation: bool = True
) -> dict[str, LogisticCalibrator]:
    """Calibrators fitted on ``records``: each kind, and a logistic one without the
    Confidence Gain / parametric signals (the ablation)."""
    X = [observation(r) for r in records]
    y = [r.outcome_correct for r in records]
    fitted: dict[str, LogisticCalibrator] = {}
    for kind in kinds:
        fitted[kind] = CALIBRATORS[kind]().fit(X, y)
    if ablation:
        features = tuple(f for f in DEFAULT_FEATURES if f not in CG_FEATURES)
        fitted[f"{kinds[0]} without CG"] = CALIBRATORS[kinds[0]](features).fit(X, y)
    return fitted


def risk_controls(
    calibrator: LogisticCalibrator,
    records: Sequence[Record],
    *,
    target_error: float,
    delta: float,
    method: str,
) -> RiskControl:
    """The answer threshold of ``calibrator`` certified on ``records``."""
    probs = calibrator.predict_proba([observation(r) for r in records])
    return control_risk(
        probs,
        [r.answer_correct for r in records],
        target_error=target_error,
        delta=delta,
        method=method,
        eligible=[not r.abstained for r in records],
    )


@dataclass(frozen=True)
class CertifiedCalibrators:
    """What ``fit_and_certify`` learnt on a calibration split, for an evaluation report."""

    calibrators: dict[str, LogisticCalibrator]
    """Each kind fitted, then the ablation of the first (``fit_calibrators``)."""
    risks: dict[str, RiskControl]
    """The answer threshold of each calibrator, certified at the target error."""
    sweep: list[tuple[str, RiskControl]]
    """The first kind's threshold certified at each target of the sweep."""
    fit_records: list[Record]
    certify_records: list[Record]


def fit_and_certify(
    items: Sequence[EvalItem],
    records: Sequence[Record],
    *,
    seed: int,
    fit_share: float,
    kinds: Sequence[str],
    target_error: float,
    delta: float,
    method: str,
    sweep_targets: Sequence[float],
) -> CertifiedCalibrators:
    """Calibrators of ``kinds`` fitted on one part of a calibration split and certified on
    the other, at ``target_error`` and (the first kind) at each of ``sweep_targets``."""
    fit_records, certify_records = fit_and_certify_parts(items, records, seed, fit_share)
    calibrators = fit_calibrators(fit_records, kinds)
    risks = {
        kind: risk_controls(
            calibrator, certify_records, target_error=target_error, delta=delta, method=method
        )
        for kind, calibrator in calibrators.items()
    }
    first = kinds[0]
    sweep = [
        (
            first,
            risk_controls(
                calibrators[first], certify_records, target_error=target, delta=delta, method=method
            ),
        )
        for target in sweep_targets
    ]
    return CertifiedCalibrators(calibrators, risks, sweep, fit_records, certify_records)


def hedge_target_for(target_error: float, given: float | None) -> float:
    """The hedge band's error target: ``given``, else twice the answer target, capped at
    0.5. One not above the answer target means no hedge band."""
    return given if given is not None else min(2 * target_error, 0.5)


@dataclass(frozen=True)
class Calibration:
    """A calibrator and its certified thresholds: what a calibrated policy is made of."""

    calibrator: LogisticCalibrator
    answer: RiskControl
    """The answer threshold, certified at the target error."""
    hedge: RiskControl | None
    """The hedge threshold, certified at the hedge target; None when there is no band."""
    fit_records: list[Record]
    certify_records: list[Record]


def calibrate(
    items: Sequence[EvalItem],
    records: Sequence[Record],
    *,
    seed: int,
    fit_share: float,
    kind: str,
    target_error: float,
    hedge_target_error: float | None,
    delta: float,
    method: str,
) -> Calibration:
    """Fit a ``kind`` calibrator on one part of the calibration split and certify its answer
    and hedge thresholds on the other. The hedge target defaults to twice the target error,
    capped at 0.5; a hedge target not above the target error gives no hedge band."""
    fit_records, certify_records = fit_and_certify_parts(items, records, seed, fit_share)
    calibrator = fit_calibrators(fit_records, [kind], ablation=False)[kind]
    answer = risk_controls(
        calibrator, certify_records, target_error=target_error, delta=delta, method=method
    )
    hedge_target = hedge_target_for(target_error, hedge_target_error)
    hedge = (
        risk_controls(
            calibrator, certify_records, target_error=hedge_target, delta=delta, method=method
        )
        if hedge_target > target_error
        else None
    )
    return Calibration(calibrator, answer, hedge, fit_records, certify_records)


def policy_risk(policy: Policy, calibrator: LogisticCalibrator) -> RiskControl:
    """The risk-control record a calibrated policy carries (its answer threshold): the one
    ``write_calibrated_policy`` stored with its calibrator, else read from the policy."""
    stored = calibrator.metadata.get("answer")
    if isinstance(stored, dict):
        try:
            return RiskControl(**stored)
        except TypeError:
            pass
    thresholds = policy.decision_thresholds()
    certificate = thresholds.certified
    return RiskControl(
        target_error=certificate.max_error_rate if certificate else float("nan"),
        delta=certificate.delta if certificate else float("nan"),
        method=policy.calibration.method if policy.calibration else "binomial",
        feasible=certificate.answer_feasible if certificate else True,
        threshold=thresholds.answer,
        n_calibration=0,
        answered=0,
        errors=0,
        coverage=float("nan"),
        tested=0,
        message="threshold read from the policy",
    )


def flag_rules(base: Policy) -> list[Rule]:
    """The rules of ``base`` whose condition tests flags only (no signal, no confidence),
    in order: the calibrated policy keeps them. A rule on a signal or the confidence is left
    out: the calibrator already weighs the signals, and such a rule would overrule thresholds
    that were certified without it. From the bundled ``balanced`` policy this keeps
    ``model-abstained`` and ``no-passages``."""
    return [
        rule
        for rule in base.rules
        if all(isinstance(leaf, FlagCondition) for leaf in rule.when.leaves())
    ]


def calibrated_policy(
    base: Policy,
    *,
    name: str,
    calibrator_file: str,
    answer: RiskControl,
    hedge: RiskControl | None,
    fitted_on: str,
) -> dict[str, Any]:
    """The calibrated policy as YAML-ready data: thresholds given as the risk target, which
    the loader certifies from the calibrator's certification data (the numbers are the same
    as ``answer`` and ``hedge`` report). Its rules are the flag rules of ``base``
    (``flag_rules``) and its actions are those of ``base``."""
    rules = [
        rule.model_dump(mode="json", by_alias=True, exclude_none=True) for rule in flag_rules(base)
    ]
    thresholds: dict[str, Any] = {
        "max_error_rate": answer.target_error,
        "delta": answer.delta,
    }
    if hedge is not None:
        thresholds["hedge_max_error_rate"] = hedge.target_error
    thresholds |= {"method": answer.method, "otherwise": "defer"}
    return {
        "version": 1,
        "name": name,
        "description": f"Calibrated thresholds: {answer.message}",
        "thresholds": thresholds,
        "rules": rules,
        "actions": base.actions.model_dump(mode="json"),
        "calibration": {"calibrator": calibrator_file, "fitted_on": fitted_on},
    }


def write_calibrated_policy(
    calibration: Calibration, base: Policy, out: Path, *, fitted_on: str
) -> tuple[Path, Path]:
    """Write the calibrated policy ``STEM.yaml`` and its calibrator ``STEM.calibrator.json``
    (``out`` is the stem, with or without ``.yaml``); return the two paths.

    The calibrator carries its certification data (the scores, correctness and eligibility
    of the certifying part), from which the loader certifies the policy's risk target."""
    calibrator, certify_records = calibration.calibrator, calibration.certify_records
    return write_policy_files(
        calibrator,
        calibration.answer,
        calibration.hedge,
        certification=(
            [float(p) for p in calibrator.predict_proba([observation(r) for r in certify_records])],
            [bool(r.answer_correct) for r in certify_records],
            [not r.abstained for r in certify_records],
        ),
        base=base,
        out=out,
        fitted_on=fitted_on,
        written_by="guardrail calibrate",
    )


def write_policy_files(
    calibrator: LogisticCalibrator,
    answer: RiskControl,
    hedge: RiskControl | None,
    *,
    certification: tuple[Sequence[float], Sequence[bool], Sequence[bool]],
    base: Policy,
    out: Path,
    fitted_on: str,
    written_by: str,
) -> tuple[Path, Path]:
    """Write ``STEM.yaml`` and ``STEM.calibrator.json`` for a calibrator whose thresholds were
    certified on ``certification`` (scores, whether each answer is right, whether it could be
    answered at all), in that order; return the two paths."""
    stem = out.with_suffix("") if out.suffix in (".yaml", ".yml") else out
    policy_out = stem.with_suffix(".yaml")
    calibrator_out = stem.parent / f"{stem.name}.calibrator.json"
    scores, correct, eligible = certification
    calibrator.metadata = {
        "fitted_on": fitted_on,
        "answer": answer.to_dict(),
        # The held-out part the thresholds are certified on: a policy that states its
        # thresholds as a risk target is certified from these when it is loaded.
        "certification": {
            "data": fitted_on,
            "scores": [round(float(p), 6) for p in scores],
            "correct": [bool(c) for c in correct],
            "eligible": [bool(e) for e in eligible],
        },
    }
    calibrator.save(calibrator_out)
    data = calibrated_policy(
        base,
        name=stem.name,
        calibrator_file=calibrator_out.name,
        answer=answer,
        hedge=hedge,
        fitted_on=fitted_on,
    )
    header = (
        f"# Written by `{written_by}` on {datetime.date.today().isoformat()}.\n"
        f"# Fitted on {fitted_on}.\n"
        "# The thresholds were chosen by risk control (Learn then Test); see docs/calibration.md.\n"
    )
    policy_out.parent.mkdir(parents=True, exist_ok=True)
    policy_out.write_text(header + yaml.safe_dump(data, sort_keys=False, width=100))
    return policy_out, calibrator_out
