"""``guardrail eval`` and ``guardrail calibrate``: the measuring instrument on the command line.

``calibrate`` runs the model over a seeded calibration split (cached), fits a calibrator,
chooses the answer and hedge thresholds by risk control, and writes a calibrated policy YAML
beside its calibrator JSON. ``eval`` runs a disjoint seeded test split and reports every
signal, the sampling baseline and the calibrated confidence, with the policy's action mix.

This module reads the options and prints; the work is done by ``calibrate`` (fitting, risk
control, the policy file), ``replay`` (the policy's actions) and ``report``.
"""

from __future__ import annotations

import argparse
import datetime
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrail.calibration import CALIBRATORS, LogisticCalibrator
from guardrail.cli_settings import config_from
from guardrail.config import GuardrailConfig
from guardrail.errors import ConfigError
from guardrail.evaluation.calibrate import (
    DEFAULT_FIT_SHARE,
    calibrate,
    fit_and_certify,
    fit_groups,
    policy_risk,
    write_calibrated_policy,
)
from guardrail.evaluation.datasets import DATASETS, SPLITS, EvalItem, load_items, split_items
from guardrail.evaluation.replay import policy_actions
from guardrail.evaluation.report import EvalReport, best_single
from guardrail.evaluation.runner import EvalRunner, Record, RecordCache
from guardrail.pipeline import Guardrail, policy_path
from guardrail.risk import METHODS, RiskControl

DEFAULT_DATA_DIR = Path("../shared/data")


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
        default=(0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
        help="error targets to certify and check, comma-separated (default 0.1,...,0.5,0.7)",
    )
    _risk_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "calibrate",
        parents=[common],
        help="fit a calibrator and certified thresholds into a policy",
    )
    add_eval_arguments(p, dataset_required=False)
    p.add_argument("--split", default="calibrate", choices=SPLITS, help="split to fit on")
    p.add_argument(
        "--policy",
        help="base policy whose actions and flag rules the calibrated policy keeps "
        "(default balanced; with --from-store, the served policy file: GUARDRAIL_POLICY)",
    )
    store = p.add_argument_group(
        "from the service's decisions (instead of --dataset)",
        "fit on the labelled decisions of one tenant (docs/calibration.md, 'Recalibrating "
        "from feedback')",
    )
    store.add_argument(
        "--from-store",
        action="store_true",
        help="fit on the labels given to the service's decisions (POST /v1/feedback)",
    )
    store.add_argument(
        "--store",
        help="the decision store: a SQLite file or a redis:// URL (default: the service "
        "settings GUARDRAIL_STORE, GUARDRAIL_REDIS_URL, GUARDRAIL_STORE_PATH)",
    )
    store.add_argument("--tenant", help="whose decisions (default: those made without a tenant)")
    store.add_argument(
        "--model", help="the generator model whose decisions to use, when there are several"
    )
    store.add_argument(
        "--holdout-share",
        type=float,
        help="share of the questions held back to compare before and after (default 0.2)",
    )
    p.add_argument(
        "--out", required=True, help="output path stem: writes STEM.yaml and STEM.calibrator.json"
    )
    p.add_argument(
        "--hedge-target-error", type=float, help="error target of the hedge band (default 2x)"
    )
    _risk_arguments(p)
    p.set_defaults(func=cmd_calibrate)


def add_eval_arguments(p: argparse.ArgumentParser, *, dataset_required: bool = True) -> None:
    """Arguments shared by ``eval`` and ``calibrate``."""
    p.add_argument(
        "--dataset",
        required=dataset_required,
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
    p.add_argument(
        "--target-error",
        type=float,
        help="alpha (default 0.1; with --from-store, the target of the policy in force if it "
        "has one)",
    )
    p.add_argument("--delta", type=float, help="failure probability (default 0.1, or the policy's)")
    p.add_argument("--method", choices=METHODS, default="binomial", help="risk-control p-value")
    p.add_argument(
        "--calibrator",
        nargs="+",
        choices=tuple(CALIBRATORS),
        default=["logistic", "isotonic"],
        help="calibrator kinds to fit (the first is used by calibrate)",
    )


def check_rates(*options: tuple[str, float | None]) -> None:
    """Refuse a rate option (given as ``(flag, value)``) outside (0, 1); None is not given."""
    for flag, value in options:
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{flag} must be between 0 and 1 (exclusive), got {value}")


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
        **_upstream(runner.guardrail, config),
        "dtype": config.resolved_dtype(),
        "prompt": (
            f"chat ({runner.settings['prompt']}), max {config.max_passage_words} words per "
            "passage, greedy, the reply's first line"
            if runner.guardrail.backend.chat
            else f"few-shot ({runner.settings['prompt']}), max {config.max_passage_words} "
            "words per passage, greedy, stop at newline"
        ),
        "retrieval": (
            f"top-{config.top_k} over {_home(config.resolved_index_dir())}"
            if open_retrieval
            else "passages given with each question"
        ),
        "correct": "token F1 >= 0.5 against a gold answer; for an unanswerable question, "
        "not answering",
        "date": datetime.date.today().isoformat(),
    }


def _upstream(guardrail: Guardrail, config: GuardrailConfig) -> dict[str, str]:
    """Proxy mode's setting, for the report: the upstream's route and the guard model."""
    if not config.upstream_url:
        return {}
    route = f"/v1/{'chat/completions' if config.upstream_api == 'chat' else 'completions'}"
    logprobs = {None: "until refused", True: "always", False: "never"}[config.upstream_logprobs]
    guard = guardrail.guard.name if guardrail.guard is not None else "none"
    return {
        "upstream": f"{route} over HTTP, logprobs asked: {logprobs}",
        "guard": f"{guard} (teacher-forces the upstream's answer with and without the passages)"
        if guardrail.guard is not None
        else "none (the upstream scores its own answer through echo, where it can)",
    }


def _home(path: Path) -> str:
    """A path with the home directory written as ``~`` (reports are shared)."""
    text, home = str(path), str(Path.home())
    return "~" + text[len(home) :] if text.startswith(home) else text


def _default_rates(args: argparse.Namespace) -> None:
    """``--target-error`` and ``--delta`` default to 0.1 when not given."""
    if args.target_error is None:
        args.target_error = 0.1
    if args.delta is None:
        args.delta = 0.1


def cmd_eval(args: argparse.Namespace) -> int:
    """``guardrail eval``."""
    _default_rates(args)
    if args.fit_split == args.split:
        raise ConfigError("--fit-split must differ from --split: never fit on the test data")
    if args.fit_share is not None and not args.fit_split:
        raise ConfigError("--fit-share applies to the calibration split: give --fit-split too")
    fit_share = DEFAULT_FIT_SHARE if args.fit_share is None else args.fit_share
    check_rates(
        ("--target-error", args.target_error), ("--delta", args.delta), ("--fit-share", fit_share)
    )
    if args.samples < 0:
        raise ConfigError(f"--samples must be 0 (no baseline) or more, got {args.samples}")
    config = config_from(args)
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
    judge = runner.guardrail.judge()
    policy = judge.policy
    if args.fit_split:
        calibration_records = runner.run(
            fit_items, label=f"{name}/{setting}/{args.fit_split} (calibration)"
        )
        single_choice = best_single(calibration_records)
        certified = fit_and_certify(
            fit_items,
            calibration_records,
            seed=args.seed,
            fit_share=fit_share,
            kinds=args.calibrator,
            target_error=args.target_error,
            delta=args.delta,
            method=args.method,
            sweep_targets=args.sweep_targets,
        )
        calibrators, risks, sweep = certified.calibrators, certified.risks, certified.sweep
        fit_records, certify_records = certified.fit_records, certified.certify_records
    if policy.calibration is not None and isinstance(judge.scorer, LogisticCalibrator):
        calibrators[f"policy {policy.name}"] = judge.scorer
        risks[f"policy {policy.name}"] = policy_risk(policy, judge.scorer)
    actions, policy_records = None, None
    if not args.no_policy:
        actions, policy_records = policy_actions(
            runner, test_items, records, judge, escalate=not args.no_escalation
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``guardrail calibrate``."""
    if args.from_store:
        if args.dataset:
            raise ConfigError("give --dataset or --from-store, not both")
        from service.recalibrate import cmd_from_store  # the service's stores

        return cmd_from_store(args)
    if not args.dataset:
        raise ConfigError(
            "give --dataset (a labelled set to fit on) or --from-store (the labels given to "
            "the service's decisions)"
        )
    for option in ("store", "tenant", "model", "holdout_share"):
        if getattr(args, option) is not None:
            flag = "--" + option.replace("_", "-")
            raise ConfigError(f"{flag} applies to --from-store only")
    _default_rates(args)
    check_rates(
        ("--target-error", args.target_error),
        ("--delta", args.delta),
        ("--hedge-target-error", args.hedge_target_error),
        ("--fit-share", args.fit_share),
    )
    fit_share = DEFAULT_FIT_SHARE if args.fit_share is None else args.fit_share
    config = config_from(args)
    items, setting = _items(args, args.split)
    fit_groups(items, args.seed, fit_share)  # refuse an impossible cut before any model run
    runner = _runner(config, items, args)
    records = runner.run(items, label=f"{Path(args.dataset).name}/{setting}/{args.split}")
    calibration = calibrate(
        items,
        records,
        seed=args.seed,
        fit_share=fit_share,
        kind=args.calibrator[0],
        target_error=args.target_error,
        hedge_target_error=args.hedge_target_error,
        delta=args.delta,
        method=args.method,
    )
    fitted_on = (
        f"{args.dataset}/{setting} split={args.split} seed={args.seed} n={args.n} "
        f"(fit share {fit_share}: fitted on {len(calibration.fit_records)}, certified on "
        f"{len(calibration.certify_records)}) "
        f"model={runner.guardrail.backend.name} ({config.resolved_dtype()}) "
        f"prompt={runner.settings['prompt']} top_k={config.top_k} "
        f"max_passage_words={config.max_passage_words}"
    )
    policy_out, calibrator_out = write_calibrated_policy(
        calibration, runner.guardrail.policy, Path(args.out), fitted_on=fitted_on
    )
    answer, hedge = calibration.answer, calibration.hedge
    print(answer.message)
    if hedge is not None:
        print(f"hedge band (target {hedge.target_error:.0%}): {hedge.message}")
    print(f"wrote {policy_out} and {calibrator_out}")
    return 0 if answer.feasible else 3


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
