"""Recalibration from a deployment's own labels: ``guardrail calibrate --from-store``.

A correctness predictor learnt from the deployment's history (the idea of "Generalized
Correctness Models"): the decisions one tenant's users asked, with the labels a team gave
them through ``/v1/feedback``, fit a calibrator with the same risk control as
``guardrail calibrate``, and the result is a calibrated policy that a tenant of the served
policy file can ``extends`` and the service can load with its reload.

The labelled decisions of the tenant (never another's) are cut by question (the normalised
text, so that a repeated question never sits on both sides) into three seeded parts: the
calibrator is fitted on one, its thresholds are certified on the second, and the third is
held back to compare the policy in force (its confidences and actions as recorded) with the
recalibrated one. Escalated decisions are left out: their signals describe another model's
answer. Decisions of several generator models are not mixed either.

A label (``correct``) judges the model's answer, the record's ``answer``, whatever the policy
did with it; for a decision where the model itself said it could not answer, ``true`` means
the documents really did not hold the answer. That is what the calibrator predicts.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guardrail.calibration import ABSTAINED, CALIBRATORS, MIN_BRANCH_SIZE, LogisticCalibrator
from guardrail.errors import GuardrailError
from guardrail.evaluation.calibrate import hedge_target_for
from guardrail.evaluation.metrics import auroc
from guardrail.risk import RiskControl, control_risk, min_answered, realised
from service.store.base import DecisionStore, Labelled, normalize_question, policy_answered

DEFAULT_HOLDOUT_SHARE = 0.2
"""The share of the questions held back to compare before and after."""
DEFAULT_FIT_SHARE = 0.5
"""Of the rest, the share the calibrator is fitted on; the other part certifies it."""
MIN_HELD_BACK = 20
"""The fewest held-back decisions a before/after comparison is reported on."""


class RecalibrationError(GuardrailError):
    """The labels cannot support a recalibration (too few, mixed, or none of the tenant)."""


@dataclass(frozen=True)
class Example:
    """One labelled decision as the calibrator reads it."""

    decision_id: str
    group: str
    """The normalised question: a question asked twice is never on both sides of a cut."""
    signals: dict[str, float | None]
    abstained: bool
    """The model itself said it could not answer (flag ``model_abstained``)."""
    correct: bool
    """The label: the answer is right, or (an abstention) the question had no answer."""
    confidence: float
    """The confidence the policy in force recorded."""
    answered: bool
    """The policy in force answered (``policy_action`` ``answer``; hedges do not count)."""
    model: str

    @property
    def observation(self) -> dict[str, float | None]:
        """The signals plus the branch key, as calibrators read them."""
        return {**self.signals, ABSTAINED: 1.0 if self.abstained else 0.0}

    @property
    def answer_correct(self) -> bool:
        """Whether the answer, were it given, is right (an abstention answers nothing)."""
        return self.correct and not self.abstained


def example(item: Labelled) -> Example:
    """A labelled record as an :class:`Example`."""
    record = item.record
    signals = {
        str(name): (float(value) if isinstance(value, int | float) else None)
        for name, value in (record.get("signals") or {}).items()
    }
    return Example(
        decision_id=str(record.get("id")),
        group=normalize_question(str(record.get("question") or "")),
        signals=signals,
        abstained="model_abstained" in (record.get("flags") or ()),
        correct=bool(item.label.correct),
        confidence=float(record.get("confidence") or 0.0),
        answered=policy_answered(record),
        model=str(record.get("model") or ""),
    )


@dataclass
class Selection:
    """A tenant's usable labelled decisions and what was left out, and why."""

    tenant: str | None
    model: str
    examples: list[Example]
    left_out: dict[str, int] = field(default_factory=dict)


def _tenant_name(tenant: str | None) -> str:
    return f"tenant {tenant!r}" if tenant is not None else "no tenant"


def _of(tenant: str | None) -> str:
    return f"of tenant {tenant!r}" if tenant is not None else "made without a tenant"


def select(labelled: Sequence[Labelled], tenant: str | None, model: str | None) -> Selection:
    """The tenant's labelled decisions a calibrator can learn from: the tenant's own only,
    not escalated, of one generator model (``model``, or the only one there is)."""
    mine = [item for item in labelled if item.record.get("tenant") == tenant]
    if not mine:
        others = Counter(str(item.record.get("tenant")) for item in labelled)
        listed = ", ".join(f"{name} ({n})" for name, n in sorted(others.items()))
        raise RecalibrationError(
            f"the store holds no labelled decisions {_of(tenant)}"
            + (
                f"; labelled decisions per tenant: {listed} (choose one with --tenant)"
                if listed
                else "; label decisions with POST /v1/feedback or /v1/feedback/batch first"
            )
        )
    left_out: dict[str, int] = {}
    escalated = [i for i in mine if i.record.get("escalated")]
    if escalated:
        left_out["escalated (signals of another model's answer)"] = len(escalated)
    direct = [example(i) for i in mine if not i.record.get("escalated")]
    models = Counter(e.model for e in direct)
    if model is None:
        if len(models) > 1:
            counts = ", ".join(f"{name} ({n})" for name, n in models.most_common())
            raise RecalibrationError(
                f"the labelled decisions {_of(tenant)} come from several models: "
                f"{counts}; one calibration cannot serve the signals of different models, so "
                "choose the model in service with --model"
            )
        model = next(iter(models), "")
    chosen = [e for e in direct if e.model == model]
    if len(chosen) < len(direct):
        left_out["other models"] = len(direct) - len(chosen)
    if not chosen:
        raise RecalibrationError(
            f"no labelled decision {_of(tenant)} comes from model {model!r}; "
            f"models: {', '.join(sorted(models)) or 'none'}"
        )
    return Selection(tenant, model, chosen, left_out)


@dataclass(frozen=True)
class Needs:
    """How many labelled decisions the model answered a recalibration needs, and why."""

    certify: int
    """Answers the certifying part needs at least."""
    total: int
    why: str


def needs(target_error: float, delta: float, *, fit_share: float, holdout_share: float) -> Needs:
    """The fewest labelled answers (decisions where the model did not abstain) that can
    support a recalibration at ``target_error`` with failure probability ``delta``."""
    certify_share = (1 - holdout_share) * (1 - fit_share)
    fit_part = (1 - holdout_share) * fit_share
    certify = min_answered(target_error, delta)
    fit = 2 * MIN_BRANCH_SIZE
    total = max(
        math.ceil(certify / certify_share),
        math.ceil(fit / fit_part),
        math.ceil(MIN_HELD_BACK / holdout_share),
    )
    why = (
        f"the certifying part ({certify_share:.0%} of them) needs at least {certify}: with "
        f"fewer, even zero errors cannot show an error rate below {target_error:g} with "
        f"probability {1 - delta:.0%} ((1 - {target_error:g})^{certify} <= {delta:g}); the "
        f"fitting part ({fit_part:.0%}) {fit} (a calibrator learns little from fewer; a "
        f"branch with fewer than {MIN_BRANCH_SIZE} examples predicts its base rate) and the "
        f"held-back part ({holdout_share:.0%}) {MIN_HELD_BACK} to compare before and after"
    )
    return Needs(certify, total, why)


def split(
    examples: Sequence[Example], *, seed: int, fit_share: float, holdout_share: float
) -> tuple[list[Example], list[Example], list[Example]]:
    """The fitting, certifying and held-back parts, cut by question (seeded)."""
    groups = sorted({e.group for e in examples})
    random.Random(f"recalibrate:{seed}").shuffle(groups)
    held = set(groups[: round(len(groups) * holdout_share)])
    rest = [g for g in groups if g not in held]
    fit = set(rest[: round(len(rest) * fit_share)])
    return (
        [e for e in examples if e.group in fit],
        [e for e in examples if e.group not in fit and e.group not in held],
        [e for e in examples if e.group in held],
    )


@dataclass(frozen=True)
class Comparison:
    """The policy in force and the recalibrated one on the held-back decisions."""

    n: int
    before_auroc: float
    before_coverage: float
    before_error: float
    after_auroc: float
    after_coverage: float
    after_error: float


@dataclass(frozen=True)
class Recalibration:
    """What ``recalibrate`` learnt, and how it compares with the policy in force."""

    selection: Selection
    calibrator: LogisticCalibrator
    answer: RiskControl
    hedge: RiskControl | None
    fit: list[Example]
    certify: list[Example]
    held_back: list[Example]
    comparison: Comparison
    certify_scores: list[float]
    """The calibrator's confidence on each decision of the certifying part."""

    def certification(self) -> tuple[list[float], list[bool], list[bool]]:
        """The certifying part's scores, answer correctness and eligibility (for the policy
        file, whose loader certifies its risk target from them)."""
        return (
            self.certify_scores,
            [e.answer_correct for e in self.certify],
            [not e.abstained for e in self.certify],
        )


def compare(
    calibrator: LogisticCalibrator, threshold: float | None, held_back: Sequence[Example]
) -> Comparison:
    """AUROC, coverage and error among answered on ``held_back``: before (the confidence and
    the action recorded by the policy in force) and after (the recalibrated confidence at
    its certified threshold)."""
    outcome = [e.correct for e in held_back]
    right = [e.answer_correct for e in held_back]
    probs = calibrator.predict_proba([e.observation for e in held_back])
    coverage, error, _ = realised(
        probs, right, threshold, eligible=[not e.abstained for e in held_back]
    )
    # Before: what the policy in force did, as "answered when 1 >= 1".
    before_coverage, before_error, _ = realised([float(e.answered) for e in held_back], right, 1.0)
    return Comparison(
        n=len(held_back),
        before_auroc=auroc([e.confidence for e in held_back], outcome),
        before_coverage=before_coverage,
        before_error=before_error,
        after_auroc=auroc(probs, outcome),
        after_coverage=coverage,
        after_error=error,
    )


def recalibrate(
    selection: Selection,
    *,
    kind: str = "logistic",
    target_error: float,
    hedge_target_error: float | None,
    delta: float,
    method: str = "binomial",
    seed: int = 0,
    fit_share: float = DEFAULT_FIT_SHARE,
    holdout_share: float = DEFAULT_HOLDOUT_SHARE,
) -> Recalibration:
    """Fit, certify and compare on the tenant's labelled decisions; a
    :class:`RecalibrationError` saying how many labels are needed, and why, when there are
    too few for that."""
    for name, share in (("fit share", fit_share), ("holdout share", holdout_share)):
        if not 0 < share < 1:
            raise RecalibrationError(f"the {name} must be between 0 and 1, got {share}")
    need = needs(target_error, delta, fit_share=fit_share, holdout_share=holdout_share)
    examples = selection.examples
    answers = sum(not e.abstained for e in examples)
    who = _tenant_name(selection.tenant)
    if answers < need.total:
        raise RecalibrationError(
            f"too few labels: {who} has {len(examples)} usable labelled decisions, "
            f"{answers} of them answers of the model (not abstentions); recalibrating at a "
            f"target error of {target_error:g} (delta {delta:g}) needs at least {need.total} "
            f"labelled answers, because {need.why}. Label more decisions "
            "(POST /v1/feedback/batch) or relax --target-error"
        )
    fit, certify, held_back = split(
        examples, seed=seed, fit_share=fit_share, holdout_share=holdout_share
    )
    problems = []
    fit_answers = [e for e in fit if not e.abstained]
    right = sum(e.correct for e in fit_answers)
    if len(fit_answers) < MIN_BRANCH_SIZE or right in (0, len(fit_answers)):
        problems.append(
            f"the fitting part has {right} right and {len(fit_answers) - right} wrong answers; "
            f"a calibrator needs at least {MIN_BRANCH_SIZE} answers, right and wrong ones, to "
            "learn anything beyond the base rate"
        )
    eligible = sum(not e.abstained for e in certify)
    if eligible < need.certify:
        problems.append(
            f"the certifying part has {eligible} answers; at least {need.certify} are needed "
            f"to certify an error rate of {target_error:g}"
        )
    outcomes = {e.correct for e in held_back}
    if len(held_back) < MIN_HELD_BACK or len(outcomes) < 2:
        problems.append(
            f"the held-back part has {len(held_back)} decisions"
            + ("" if len(outcomes) == 2 else " all labelled alike")
            + f"; comparing before and after needs {MIN_HELD_BACK} with right and wrong ones"
        )
    if problems:
        raise RecalibrationError(
            f"too few labels {_of(selection.tenant)} for this cut ({len(examples)} labelled "
            f"decisions, split by question with seed {seed}): "
            + "; ".join(problems)
            + ". Label more decisions (POST /v1/feedback/batch) or relax --target-error"
        )
    calibrator = CALIBRATORS[kind]().fit([e.observation for e in fit], [e.correct for e in fit])
    probs = calibrator.predict_proba([e.observation for e in certify])
    correct = [e.answer_correct for e in certify]
    ok = [not e.abstained for e in certify]

    def certified(target: float) -> RiskControl:
        return control_risk(
            probs, correct, target_error=target, delta=delta, method=method, eligible=ok
        )

    answer = certified(target_error)
    hedge_target = hedge_target_for(target_error, hedge_target_error)
    hedge = certified(hedge_target) if hedge_target > target_error else None
    comparison = compare(calibrator, answer.threshold, held_back)
    return Recalibration(
        selection,
        calibrator,
        answer,
        hedge,
        fit,
        certify,
        held_back,
        comparison,
        [float(p) for p in probs],
    )


def fitted_on(result: Recalibration, store: str, seed: int) -> str:
    """The provenance line of the written policy and calibrator."""
    s = result.selection
    return (
        f"labelled decisions {_of(s.tenant)} in {store} (model {s.model}; "
        f"split by question, seed {seed}: fitted on {len(result.fit)}, certified on "
        f"{len(result.certify)}, {len(result.held_back)} held back)"
    )


def summary(result: Recalibration, policy_name: str) -> list[str]:
    """The lines ``guardrail calibrate --from-store`` prints."""
    s, c = result.selection, result.comparison
    lines = [
        f"{_tenant_name(s.tenant)}: {len(s.examples)} labelled decisions of model {s.model}"
        + "".join(f"; {n} left out: {why}" for why, n in s.left_out.items()),
        f"split by question: fitted on {len(result.fit)}, certified on "
        f"{len(result.certify)}, held back {len(result.held_back)}",
        result.answer.message,
    ]
    if result.hedge is not None:
        lines.append(f"hedge band (target {result.hedge.target_error:g}): {result.hedge.message}")

    def pct(value: float) -> str:
        return f"{value:.0%}"

    def num(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    lines += [
        f"held back ({c.n} decisions)                    AUROC  coverage  error among answered",
        f"  before: {policy_name} as recorded".ljust(45)
        + f"{num(c.before_auroc):>6}  {pct(c.before_coverage):>8}  {pct(c.before_error):>20}",
        f"  after: recalibrated, target {result.answer.target_error:g}".ljust(45)
        + f"{num(c.after_auroc):>6}  {pct(c.after_coverage):>8}  {pct(c.after_error):>20}",
    ]
    if c.after_auroc < c.before_auroc:  # False when either is NaN
        lines.append(
            f"warning: on the held-back labels the recalibrated confidence ranks right and wrong "
            f"responses worse than the policy in force (AUROC {c.after_auroc:.3f} < "
            f"{c.before_auroc:.3f}); with {len(result.fit)} decisions to fit on it may not "
            "have learnt enough: keep the policy in force and label more decisions"
        )
    return lines


def open_store_for(store: str | None, settings: Any) -> tuple[DecisionStore, str]:
    """The store to read: ``store`` (a ``redis://`` URL or a SQLite file), else the one the
    service settings name. A SQLite file that does not exist is an error, not a new store."""
    from guardrail.redact import without_credentials
    from service.store import RedisStore, SqliteStore

    if store is None:
        if settings.store == "redis":
            store = str(settings.redis_url)
        else:
            store = str(settings.resolved_store_path())
    if store.startswith(("redis://", "rediss://", "unix://")):
        redis_store = RedisStore(store)
        redis_store.ping()
        return redis_store, without_credentials(store)
    path = Path(store)
    if not path.is_file():
        raise RecalibrationError(
            f"no decision store at {path}: give the service's SQLite file or Redis URL with "
            "--store (default: GUARDRAIL_STORE, GUARDRAIL_REDIS_URL or GUARDRAIL_STORE_PATH)"
        )
    return SqliteStore(path), str(path)


def cmd_from_store(args: Any) -> int:
    """``guardrail calibrate --from-store``: read, fit, certify, compare, write, print."""
    from guardrail.cli_settings import settings_from
    from guardrail.evaluation.calibrate import write_policy_files
    from guardrail.evaluation.cli import check_rates
    from guardrail.pipeline import policy_path
    from guardrail.policy_runtime import load_policies
    from service.settings import ServiceSettings
    from service.store import StoreError

    settings = settings_from(ServiceSettings, args)
    policy = load_policies(policy_path(settings.policy)).policy_for(args.tenant)
    certificate = policy.decision_thresholds().certified
    target = args.target_error
    if target is None:
        target = certificate.max_error_rate if certificate else 0.1
    delta = args.delta
    if delta is None:
        delta = certificate.delta if certificate else 0.1
    fit_share = DEFAULT_FIT_SHARE if args.fit_share is None else args.fit_share
    holdout = DEFAULT_HOLDOUT_SHARE if args.holdout_share is None else args.holdout_share
    check_rates(
        ("--target-error", target),
        ("--delta", delta),
        ("--hedge-target-error", args.hedge_target_error),
        ("--fit-share", fit_share),
        ("--holdout-share", holdout),
    )
    try:
        store, name = open_store_for(args.store, settings)
        try:
            labelled = store.labelled()
        finally:
            store.close()
    except StoreError as exc:
        raise RecalibrationError(f"cannot read the decision store: {exc}") from None
    selection = select(labelled, args.tenant, args.model)
    result = recalibrate(
        selection,
        kind=args.calibrator[0],
        target_error=target,
        hedge_target_error=args.hedge_target_error,
        delta=delta,
        method=args.method,
        seed=args.seed,
        fit_share=fit_share,
        holdout_share=holdout,
    )
    policy_out, calibrator_out = write_policy_files(
        result.calibrator,
        result.answer,
        result.hedge,
        certification=result.certification(),
        base=policy,
        out=Path(args.out),
        fitted_on=fitted_on(result, name, args.seed),
        written_by="guardrail calibrate --from-store",
    )
    for line in summary(result, policy.name):
        print(line)
    print(f"wrote {policy_out} and {calibrator_out}")
    if args.tenant is not None:
        print(
            f"serve it: in the policy file, tenants: {{{args.tenant}: {{extends: "
            f"<path of {policy_out.name} relative to the file>}}}}, then POST "
            "/v1/policies/reload with the admin key"
        )
    else:
        print(f"serve it: GUARDRAIL_POLICY={policy_out}, or extend it from the policy file")
    return 0 if result.answer.feasible else 3
