"""``guardrail eval`` and ``guardrail calibrate``: the measuring instrument on the command line.

``calibrate`` runs the model over a seeded calibration split (cached), fits a calibrator,
chooses the answer and hedge thresholds by risk control, and writes a calibrated policy YAML
beside its calibrator JSON. ``eval`` runs a disjoint seeded test split and reports every
signal, the sampling baseline and the calibrated confidence, with the policy's action mix.
"""

from __future__ import annotations

import argparse
import datetime
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from guardrail.calibration import CALIBRATORS, CG_FEATURES, DEFAULT_FEATURES, LogisticCalibrator
from guardrail.config import GuardrailConfig
from guardrail.errors import ConfigError
from guardrail.evaluation.datasets import (
    DATASETS,
    SPLITS,
    EvalItem,
    load_items,
    split_items,
)
from guardrail.evaluation.report import EvalReport, best_single, observation
from guardrail.evaluation.runner import EvalRunner, Record, RecordCache
from guardrail.pipeline import Guardrail, policy_path
from guardrail.risk import METHODS, RiskControl, control_risk
from policies import Action, Assessment, Policy, decide
from policies.escalation import EscalationLedger

DEFAULT_DATA_DIR = Path("../shared/data")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``eval`` and ``calibrate``."""
    p.add_argument(
        "--dataset",
        required=True,
        help=f"one of {', '.join(DATASETS)}, or a labelled .jsonl file",
    )
    p.add_argument("--setting", help="the dataset's setting (e.g. gold or open for squad2)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of the sets")
    p.add_argument("--n", type=int, default=300, help="questions in the split (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--top-k", type=int, help="passages retrieved in open settings")
    p.add_argument("--max-passage-words", type=int, help="words of each passage shown to the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--records",
        type=Path,
        help="folder of the cached model runs (default CACHE_DIR/eval/MODEL)",
    )


def _config(args: argparse.Namespace, base: GuardrailConfig) -> GuardrailConfig:
    updates: dict[str, Any] = {}
    if args.top_k is not None:
        updates["top_k"] = args.top_k
    if args.max_passage_words is not None:
        updates["max_passage_words"] = args.max_passage_words
    return base.model_copy(update=updates) if updates else base


def _items(args: argparse.Namespace, split: str) -> tuple[list[EvalItem], str]:
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    items, setting = load_items(args.dataset, args.setting, args.data_dir)
    return split_items(items, split, args.n, args.seed), setting


def _runner(
    config: GuardrailConfig, items: Sequence[EvalItem], args: argparse.Namespace
) -> EvalRunner:
    needs_index = any(item.open_retrieval for item in items)
    guardrail = Guardrail.from_config(config, with_index=needs_index)
    folder = args.records or config.cache_dir / "eval" / guardrail.backend.name
    cache = RecordCache(folder)
    return EvalRunner(guardrail, cache, progress=not args.no_progress)


def _setting(
    args: argparse.Namespace,
    setting: str,
    split: str,
    config: GuardrailConfig,
    runner: EvalRunner,
    items: Sequence[EvalItem],
) -> dict[str, Any]:
    open_retrieval = any(item.open_retrieval for item in items)
    return {
        "dataset": args.dataset,
        "setting": setting,
        "split": split,
        "seed": args.seed,
        "n": args.n,
        "model": runner.guardrail.backend.name,
        "dtype": config.dtype,
        "prompt": f"few-shot ({runner.settings['prompt']}), max {config.max_passage_words} "
        "words per passage, greedy, stop at newline",
        "retrieval": (
            f"top-{config.top_k} over {_home(config.resolved_index_dir())}"
            if open_retrieval
            else "passages given with each question"
        ),
        "correct": "token F1 >= 0.5 against a gold answer; for an unanswerable question, "
        "not answering",
        "date": datetime.date.today().isoformat(),
    }


def _home(path: Path) -> str:
    """A path with the home directory written as ``~`` (reports are shared)."""
    text, home = str(path), str(Path.home())
    return "~" + text[len(home) :] if text.startswith(home) else text


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
    policy: Policy,
    *,
    escalate: bool = True,
) -> tuple[list[str], list[Record]]:
    """The policy's action for each record. An escalation runs the policy's chain on the
    target models (their answers cached like the records) and is scored on what it returns
    (that answer replaces the original); with ``escalate=False`` it counts as a defer.
    Budgets see every decision, one question after another at the pace the records were
    measured (``_QuestionClock``)."""
    scorer = runner.guardrail.scorer
    clock = _QuestionClock()
    ledger = EscalationLedger(clock=clock)
    actions: list[str] = []
    scored: list[Record] = []
    for item, record in zip(items, records, strict=True):
        clock.now += sum(record.timings.values())
        confidence = scorer.confidence(record.signals, abstained=record.abstained)
        decision = decide(
            Assessment(confidence, dict(record.signals), frozenset(record.flags)), policy
        )
        ledger.record_decision(policy.name)
        if decision.action is Action.ESCALATE:
            if escalate:
                passages, _ = runner.passages_for(item)
                assessed, decision = runner.guardrail.escalate(
                    item.question,
                    passages,
                    decision,
                    policy=policy,
                    scorer=scorer,
                    assess=runner.assess_target,
                    ledger=ledger,
                )
                if assessed is not None:
                    record = replace(record, answer=assessed.answer, abstained=assessed.abstained)
            else:
                decision = replace(decision, action=Action.DEFER)
        actions.append(decision.action.value)
        scored.append(record)
    return actions, scored


def _policy_risk(policy: Policy, calibrator: LogisticCalibrator) -> RiskControl:
    """The risk-control record a calibrated policy carries (its answer threshold)."""
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


def cmd_eval(args: argparse.Namespace, base: GuardrailConfig) -> int:
    """``guardrail eval``."""
    if args.fit_split == args.split:
        raise ConfigError("--fit-split must differ from --split: never fit on the test data")
    if args.fit_share is not None and not args.fit_split:
        raise ConfigError("--fit-share applies to the calibration split: give --fit-split too")
    fit_share = DEFAULT_FIT_SHARE if args.fit_share is None else args.fit_share
    for flag, value in (
        ("--target-error", args.target_error),
        ("--delta", args.delta),
        ("--fit-share", fit_share),
    ):
        if not 0 < value < 1:
            raise ConfigError(f"{flag} must be between 0 and 1 (exclusive), got {value}")
    if args.samples < 0:
        raise ConfigError(f"--samples must be 0 (no baseline) or more, got {args.samples}")
    config = _config(args, base)
    fit_items: list[EvalItem] = []
    if args.fit_split:
        fit_items, _ = _items(args, args.fit_split)
        fit_groups(fit_items, args.seed, fit_share)  # refuse an impossible cut before any run
    test_items, setting = _items(args, args.split)
    runner = _runner(config, test_items, args)
    name = Path(args.dataset).name
    records = runner.run(test_items, samples=args.samples, label=f"{name}/{setting}/{args.split}")
    calibrators: dict[str, LogisticCalibrator] = {}
    risks: dict[str, RiskControl] = {}
    sweep: list[tuple[str, RiskControl]] = []
    fit_records: list[Record] = []
    certify_records: list[Record] = []
    single_choice = None
    policy_file = policy_path(config.policy)
    policy = runner.guardrail.policy
    if args.fit_split:
        calibration_records = runner.run(
            fit_items, label=f"{name}/{setting}/{args.fit_split} (calibration)"
        )
        fit_records, certify_records = fit_and_certify_parts(
            fit_items, calibration_records, args.seed, fit_share
        )
        single_choice = best_single(calibration_records)
        calibrators = fit_calibrators(fit_records, args.calibrator)
        for kind, calibrator in calibrators.items():
            risks[kind] = risk_controls(
                calibrator,
                certify_records,
                target_error=args.target_error,
                delta=args.delta,
                method=args.method,
            )
        first = args.calibrator[0]
        sweep = [
            (
                first,
                risk_controls(
                    calibrators[first],
                    certify_records,
                    target_error=target,
                    delta=args.delta,
                    method=args.method,
                ),
            )
            for target in args.sweep_targets
        ]
    if policy.calibration is not None and isinstance(runner.guardrail.scorer, LogisticCalibrator):
        calibrators[f"policy {policy.name}"] = runner.guardrail.scorer
        risks[f"policy {policy.name}"] = _policy_risk(policy, runner.guardrail.scorer)
    actions, policy_records = None, None
    if not args.no_policy:
        actions, policy_records = policy_actions(
            runner, test_items, records, policy, escalate=not args.no_escalation
        )
    report = EvalReport(
        setting={
            **_setting(args, setting, args.split, config, runner, test_items),
            "policy": f"{policy.name} ({policy_file.name})",
            "fit_split": (
                f"{args.fit_split}: calibrators fitted on {len(fit_records)} questions (fit "
                f"share {fit_share}), thresholds certified on the other {len(certify_records)} "
                "(disjoint paragraphs)"
                if args.fit_split
                else "none"
            ),
        },
        records=records,
        calibrators=calibrators,
        risk=risks,
        sweep=sweep,
        policy_actions=actions,
        policy_records=policy_records,
        single_choice=single_choice,
    )
    result = report.compute()
    out = args.out or Path("reports") / f"{Path(args.dataset).stem}-{setting}-{args.split}"
    written = report.write(out)
    _print_summary(result)
    print(f"report: {written[1]} (and {', '.join(p.name for p in written if p != written[1])})")
    return 0


def _fmt(value: Any) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.3f}"
    )


def _print_summary(result: dict[str, Any]) -> None:
    summary = result["summary"]
    print(
        f"{result['setting']['dataset']}/{result['setting']['setting']} "
        f"{result['setting']['split']}: n={summary['n']}, response accuracy "
        f"{_fmt(summary['response_accuracy'])}"
    )
    best = max(
        result["signals"].items(),
        key=lambda kv: -1 if math.isnan(kv[1]["auroc"]) else kv[1]["auroc"],
        default=("", {"auroc": math.nan}),
    )
    if math.isnan(best[1]["auroc"]):
        print("  best single signal: n/a (AUROC needs right and wrong responses in the split)")
    else:
        print(f"  best single signal: {best[0]} AUROC {_fmt(best[1]['auroc'])}")
    chosen = result.get("single_chosen_on_calibration")
    if chosen:
        print(
            f"  single signal chosen on the calibration split: {chosen['signal']} AUROC "
            f"{_fmt(chosen['auroc'])}"
        )
    if "sampling_baseline" in result:
        print(f"  sampling agreement AUROC {_fmt(result['sampling_baseline']['auroc'])}")
    for name, block in result.get("calibrated", {}).items():
        line = f"  calibrated ({name}) AUROC {_fmt(block['auroc'])}, ECE {_fmt(block['ece'])}"
        rc = block.get("risk_control")
        if rc:
            line += (
                f"; at target {rc['calibration']['target_error']}: test coverage "
                f"{_fmt(rc['test_coverage'])}, error among answered "
                f"{_fmt(rc['test_error_among_answered'])}"
            )
        print(line)
    if "policy" in result:
        policy = result["policy"]
        print(
            f"  policy: coverage {_fmt(policy['coverage'])}, error among answered "
            f"{_fmt(policy['error_among_answered'])}, actions {policy['action_mix']}"
        )


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
    as ``answer`` and ``hedge`` report)."""
    rules: list[dict[str, Any]] = [
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


def cmd_calibrate(args: argparse.Namespace, base: GuardrailConfig) -> int:
    """``guardrail calibrate``."""
    for flag, value in (
        ("--target-error", args.target_error),
        ("--delta", args.delta),
        ("--hedge-target-error", args.hedge_target_error),
        ("--fit-share", args.fit_share),
    ):
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{flag} must be between 0 and 1 (exclusive), got {value}")
    fit_share = DEFAULT_FIT_SHARE if args.fit_share is None else args.fit_share
    config = _config(args, base)
    items, setting = _items(args, args.split)
    fit_groups(items, args.seed, fit_share)  # refuse an impossible cut before any model run
    runner = _runner(config, items, args)
    records = runner.run(items, label=f"{Path(args.dataset).name}/{setting}/{args.split}")
    fit_records, certify_records = fit_and_certify_parts(items, records, args.seed, fit_share)
    kind = args.calibrator[0]
    calibrator = fit_calibrators(fit_records, [kind], ablation=False)[kind]
    answer = risk_controls(
        calibrator,
        certify_records,
        target_error=args.target_error,
        delta=args.delta,
        method=args.method,
    )
    hedge_target = args.hedge_target_error
    if hedge_target is None:
        hedge_target = min(2 * args.target_error, 0.5)
    hedge = (
        risk_controls(
            calibrator,
            certify_records,
            target_error=hedge_target,
            delta=args.delta,
            method=args.method,
        )
        if hedge_target > args.target_error
        else None
    )
    out = Path(args.out)
    stem = out.with_suffix("") if out.suffix in (".yaml", ".yml") else out
    policy_out = stem.with_suffix(".yaml")
    calibrator_out = stem.parent / f"{stem.name}.calibrator.json"
    fitted_on = (
        f"{args.dataset}/{setting} split={args.split} seed={args.seed} n={args.n} "
        f"(fit share {fit_share}: fitted on {len(fit_records)}, certified on "
        f"{len(certify_records)}) "
        f"model={runner.guardrail.backend.name} ({config.dtype}) "
        f"prompt={runner.settings['prompt']} top_k={config.top_k} "
        f"max_passage_words={config.max_passage_words}"
    )
    probs = calibrator.predict_proba([observation(r) for r in certify_records])
    calibrator.metadata = {
        "fitted_on": fitted_on,
        "answer": answer.to_dict(),
        # The held-out part the thresholds are certified on: a policy that states its
        # thresholds as a risk target is certified from these when it is loaded.
        "certification": {
            "data": fitted_on,
            "scores": [round(float(p), 6) for p in probs],
            "correct": [bool(r.answer_correct) for r in certify_records],
            "eligible": [not r.abstained for r in certify_records],
        },
    }
    calibrator.save(calibrator_out)
    data = calibrated_policy(
        runner.guardrail.policy,
        name=stem.name,
        calibrator_file=calibrator_out.name,
        answer=answer,
        hedge=hedge,
        fitted_on=fitted_on,
    )
    header = (
        f"# Written by `guardrail calibrate` on {datetime.date.today().isoformat()}.\n"
        f"# Fitted on {fitted_on}.\n"
        "# The thresholds were chosen by risk control (Learn then Test); see docs/calibration.md.\n"
    )
    policy_out.parent.mkdir(parents=True, exist_ok=True)
    policy_out.write_text(header + yaml.safe_dump(data, sort_keys=False, width=100))
    print(answer.message)
    if hedge is not None:
        print(f"hedge band (target {hedge.target_error:.0%}): {hedge.message}")
    print(f"wrote {policy_out} and {calibrator_out}")
    return 0 if answer.feasible else 3


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``eval`` and ``calibrate`` to the command line."""
    p = sub.add_parser(
        "eval", parents=[common], help="evaluate signals and calibration on a dataset"
    )
    add_eval_arguments(p)
    p.add_argument("--split", default="test", choices=SPLITS, help="split to report on")
    p.add_argument(
        "--fit-split",
        choices=SPLITS,
        help="also fit calibrators on this (other) split and report them on --split",
    )
    p.add_argument(
        "--samples", type=int, default=0, help="sampling baseline: answers per question (e.g. 5)"
    )
    p.add_argument("--policy", help="policy to apply (a calibrated policy brings its calibrator)")
    p.add_argument("--no-policy", action="store_true", help="skip the policy's action mix")
    p.add_argument("--no-escalation", action="store_true", help="count escalations as defers")
    p.add_argument("--out", type=Path, help="report folder (default reports/DATASET-SETTING-SPLIT)")
    p.add_argument(
        "--sweep-targets",
        type=_targets,
        default=(0.1, 0.2, 0.3, 0.5, 0.7),
        help="error targets to certify and check, comma-separated (default 0.1,0.2,0.3,0.5,0.7)",
    )
    _risk_arguments(p)
    p.set_defaults(command_func=cmd_eval)

    p = sub.add_parser(
        "calibrate",
        parents=[common],
        help="fit a calibrator and certified thresholds into a policy",
    )
    add_eval_arguments(p)
    p.add_argument("--split", default="calibrate", choices=SPLITS, help="split to fit on")
    p.add_argument("--policy", help="base policy whose actions the calibrated policy keeps")
    p.add_argument(
        "--out", required=True, help="output path stem: writes STEM.yaml and STEM.calibrator.json"
    )
    p.add_argument(
        "--hedge-target-error", type=float, help="error target of the hedge band (default 2x)"
    )
    _risk_arguments(p)
    p.set_defaults(command_func=cmd_calibrate)


def _targets(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.1,0.2, got {text!r}"
        ) from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every target must be between 0 and 1, got {text!r}")
    return values


def _risk_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fit-share",
        type=float,
        help="share of the calibration split's paragraphs the calibrator is fitted on; the "
        f"rest certifies its thresholds (default {DEFAULT_FIT_SHARE})",
    )
    p.add_argument("--target-error", type=float, default=0.1, help="alpha (default 0.1)")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability (default 0.1)")
    p.add_argument("--method", choices=METHODS, default="binomial", help="risk-control p-value")
    p.add_argument(
        "--calibrator",
        nargs="+",
        choices=tuple(CALIBRATORS),
        default=["logistic", "isotonic"],
        help="calibrator kinds to fit (the first is used by calibrate)",
    )
