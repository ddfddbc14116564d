"""The evaluation report: every signal, the sampling baseline and the calibrated confidence,
scored side by side on one set of records, written as JSON, Markdown and PNG plots.

Correctness of a *response* (``outcome``): a right answer, or an abstention on an
unanswerable question. AUROC, AURC and PRR rank responses by a score for that outcome; the
"answered-only" AUROC ranks only the responses where the model answered, by whether the
answer is right. Each single signal enters with a direction fixed in advance (``DIRECTIONS``,
read from ``guardrail.signals.REGISTRY``: +1 when a higher value should mean a better answer),
never fitted on the data it is scored on; a missing value ranks last.

Risk control is scored on the answers: at a threshold ``t`` the system answers when the model
did not abstain and the calibrated confidence is ``>= t``; the error among answered is the
share of those answers that are wrong (every answer to an unanswerable question is wrong).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.calibration import ABSTAINED, LogisticCalibrator
from guardrail.evaluation import metrics
from guardrail.evaluation.runner import Record, sampling_agreement
from guardrail.risk import RiskControl, realised
from guardrail.signals import REGISTRY

DIRECTIONS: Mapping[str, int] = {s.name: s.direction for s in REGISTRY}
"""A priori direction of each signal: +1 when higher should mean more likely right."""

COVERAGES = (0.2, 0.4, 0.6, 0.8, 1.0)


def observation(record: Record) -> dict[str, float | None]:
    """A record's signals plus the branch key, as calibrators read them."""
    return {**record.signals, ABSTAINED: 1.0 if record.abstained else 0.0}


def _oriented(values: Sequence[float | None], direction: int) -> np.ndarray:
    present = [v for v in values if v is not None and math.isfinite(v)]
    worst = (min(present) if direction > 0 else max(present)) if present else 0.0
    filled = np.array([v if v is not None and math.isfinite(v) else worst for v in values])
    return direction * filled - np.array(
        [0.0 if v is not None and math.isfinite(v) else 1e-9 for v in values]
    )


def oriented_signals(records: Sequence[Record]) -> dict[str, np.ndarray]:
    """Each signal that has a value on some record, as a score oriented by ``DIRECTIONS``
    (higher: more likely right; a missing value ranks last)."""
    return {
        name: _oriented([r.signals.get(name) for r in records], direction)
        for name, direction in DIRECTIONS.items()
        if any(r.signals.get(name) is not None for r in records)
    }


def best_single(records: Sequence[Record]) -> tuple[str, float] | None:
    """The single signal with the highest AUROC on ``records`` (oriented by ``DIRECTIONS``),
    and that AUROC; None when no signal separates anything (one class only, or no values)."""
    outcome = np.array([r.outcome_correct for r in records])
    aurocs = {
        name: metrics.auroc(scores, outcome) for name, scores in oriented_signals(records).items()
    }
    finite = {name: a for name, a in aurocs.items() if math.isfinite(a)}
    if not finite:
        return None
    name = max(finite, key=lambda n: finite[n])
    return name, finite[name]


def score_block(
    scores: np.ndarray, records: Sequence[Record], *, probabilities: bool = False
) -> dict[str, Any]:
    """AUROC (all responses and answered-only, and the answered-only one split in its two
    tasks), AURC, PRR, selective accuracy; ECE for probabilities.

    Among the model's answers, a wrong one is either a misreading of an answerable question or
    any answer to an unanswerable one. ``auroc_reading`` scores the first task alone (answers
    to answerable questions: right vs. wrong), ``auroc_answerability`` the second (all answers:
    answerable vs. unanswerable question); NaN where a set has only one kind.
    """
    outcome = np.array([r.outcome_correct for r in records])
    answered = np.array([not r.abstained for r in records])
    right = np.array([r.answer_correct for r in records])
    answerable = np.array([not r.unanswerable for r in records])
    reading = answered & answerable
    block: dict[str, Any] = {
        "auroc": metrics.auroc(scores, outcome),
        "auroc_answered": (
            metrics.auroc(scores[answered], right[answered]) if answered.any() else float("nan")
        ),
        "auroc_reading": (
            metrics.auroc(scores[reading], right[reading]) if reading.any() else float("nan")
        ),
        "auroc_answerability": (
            metrics.auroc(scores[answered], answerable[answered])
            if answered.any()
            else float("nan")
        ),
        "aurc": metrics.aurc(scores, outcome),
        "prr": metrics.prr(scores, outcome),
        "selective_accuracy": {
            f"{c:.1f}": metrics.selective_accuracy(scores, outcome, c) for c in COVERAGES
        },
    }
    if probabilities:
        block["ece"] = metrics.ece(scores, outcome)
        block["reliability"] = [vars(b) for b in metrics.reliability(scores, outcome)]
    return block


@dataclass
class EvalReport:
    """Everything measured on one evaluation split."""

    setting: dict[str, Any]
    records: list[Record]
    calibrators: dict[str, LogisticCalibrator] = field(default_factory=dict)
    risk: dict[str, RiskControl] = field(default_factory=dict)
    sweep: list[tuple[str, RiskControl]] = field(default_factory=list)
    policy_actions: list[str] | None = None
    policy_records: list[Record] | None = None
    single_choice: tuple[str, float] | None = None
    """The best single signal on the calibration split and its AUROC there (``best_single``):
    the signal a deployment without a calibrator would pick, chosen without the test data."""
    result: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    """Every single score (oriented signals, sampling agreement), computed once."""
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    """Each calibrator's probabilities on the records, computed once."""

    def compute(self) -> dict[str, Any]:
        """Fill ``result`` and return it."""
        records = self.records
        n = len(records)
        outcome = np.array([r.outcome_correct for r in records])
        abstained = np.array([r.abstained for r in records])
        unanswerable = np.array([r.unanswerable for r in records])
        right = np.array([r.answer_correct for r in records])
        summary = {
            "n": n,
            "unanswerable": int(unanswerable.sum()),
            "response_accuracy": float(outcome.mean()),
            "answer_accuracy_all": float(right.sum() / n),
            "exact_match_answerable": (
                float(np.mean([r.em for r in records if not r.unanswerable]))
                if (~unanswerable).any()
                else float("nan")
            ),
            "f1_answerable": (
                float(np.mean([r.f1 for r in records if not r.unanswerable]))
                if (~unanswerable).any()
                else float("nan")
            ),
            "model_abstention_rate_answerable": (
                float(abstained[~unanswerable].mean()) if (~unanswerable).any() else float("nan")
            ),
            "model_abstention_rate_unanswerable": (
                float(abstained[unanswerable].mean()) if unanswerable.any() else float("nan")
            ),
        }
        gold = [r.gold_retrieved for r in records if r.gold_retrieved is not None]
        if gold:
            summary["gold_passage_retrieved"] = float(np.mean(gold))
        singles = oriented_signals(records)
        self.curves.update(singles)
        signals = {name: score_block(scores, records) for name, scores in singles.items()}
        out: dict[str, Any] = {"setting": self.setting, "summary": summary, "signals": signals}
        if all(r.samples is not None for r in records):
            agreement = np.array(
                [sampling_agreement(r.answer, r.samples or (), r.abstained) for r in records]
            )
            self.curves["sampling agreement"] = agreement
            out["sampling_baseline"] = {
                "samples": len(records[0].samples or ()),
                **score_block(agreement, records),
            }
        if self.calibrators:
            out["calibrated"] = {}
            observations = [observation(r) for r in records]
            for name, calibrator in self.calibrators.items():
                probs = self.probabilities[name] = calibrator.predict_proba(observations)
                block = score_block(probs, records, probabilities=True)
                block["features"] = list(calibrator.features)
                block["kind"] = calibrator.kind
                risk = self.risk.get(name)
                if risk is not None:
                    coverage, error, answered = realised(
                        probs, right, risk.threshold, eligible=~abstained
                    )
                    block["risk_control"] = {
                        "calibration": risk.to_dict(),
                        "test_coverage": coverage,
                        "test_answered": answered,
                        "test_error_among_answered": error,
                        "target_met": error <= risk.target_error,
                    }
                out["calibrated"][name] = block
        if self.single_choice is not None:
            name, calibration_auroc = self.single_choice
            out["single_chosen_on_calibration"] = {
                "signal": name,
                "calibration_auroc": calibration_auroc,
                "auroc": signals[name]["auroc"] if name in signals else float("nan"),
            }
        if self.sweep:
            out["risk_sweep"] = self._sweep(right, abstained)
        out["cost"] = self._cost()
        if self.policy_actions is not None:
            scored = self.policy_records or records
            out["policy"] = self._policy_block(
                np.array([r.answer_correct for r in scored]), unanswerable
            )
        self.result = out
        return out

    def _sweep(self, right: np.ndarray, abstained: np.ndarray) -> list[dict[str, Any]]:
        rows = []
        for name, risk in self.sweep:
            probs = self.probabilities[name]
            coverage, error, answered = realised(probs, right, risk.threshold, ~abstained)
            rows.append(
                {
                    "calibrator": name,
                    "target_error": risk.target_error,
                    "delta": risk.delta,
                    "feasible": risk.feasible,
                    "threshold": risk.threshold,
                    "calibration_coverage": risk.coverage,
                    "calibration_error": risk.errors / risk.answered if risk.answered else None,
                    "test_coverage": coverage,
                    "test_answered": answered,
                    "test_error_among_answered": error,
                    "target_met": error <= risk.target_error,
                }
            )
        return rows

    def _cost(self) -> dict[str, Any]:
        def median(key: str) -> float:
            values = [r.timings.get(key, 0.0) for r in self.records]
            return float(statistics.median(values)) if values else float("nan")

        generate = median("generate")
        cost: dict[str, Any] = {
            "median_seconds": {
                "generate": generate,
                "parametric_score": median("score"),
                "abstain_probe": median("abstain_probe"),
                "text_signals": median("signals"),
                "retrieve": median("retrieve"),
            }
        }
        extra = ("score", "abstain_probe", "signals")
        ratios = [
            (r.timings["generate"] + sum(r.timings.get(k, 0.0) for k in extra))
            / r.timings["generate"]
            for r in self.records
            if r.timings.get("generate")
        ]
        cost["signals_over_generation_median"] = (
            float(statistics.median(ratios)) if ratios else None
        )
        sampled = [
            r.sample_seconds / r.timings["generate"]
            for r in self.records
            if r.sample_seconds is not None and r.timings.get("generate")
        ]
        if sampled:
            cost["sampling_over_generation_median"] = float(statistics.median(sampled))
        return cost

    def _policy_block(self, right: np.ndarray, unanswerable: np.ndarray) -> dict[str, Any]:
        actions = self.policy_actions or []
        answered = np.array([a in ("answer", "hedge") for a in actions])
        mix = {a: actions.count(a) / len(actions) for a in sorted(set(actions))}
        precision, recall = metrics.abstention_precision_recall(answered, unanswerable)
        n_answered = int(answered.sum())
        return {
            "action_mix": mix,
            "coverage": n_answered / len(actions),
            "error_among_answered": (
                float((answered & ~right).sum() / n_answered) if n_answered else 0.0
            ),
            "abstention_precision": precision,
            "abstention_recall": recall,
        }

    # -- output -------------------------------------------------------------------------
    def write(self, folder: Path) -> list[Path]:
        """JSON, Markdown and PNG plots into ``folder``; returns the paths written."""
        if not self.result:
            self.compute()
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "report.json", folder / "report.md"]
        written[0].write_text(json.dumps(self.result, indent=2, default=_jsonable) + "\n")
        written.extend(self._plots(folder))
        written[1].write_text(markdown(self.result, [p.name for p in written[2:]]))
        return written

    def _plots(self, folder: Path) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        outcome = np.array([r.outcome_correct for r in self.records])
        curves, calibrated = self.curves, self.probabilities
        paths = []
        fig, ax = plt.subplots(figsize=(7, 5))
        for name, scores in curves.items():
            cov, risk = metrics.risk_coverage(scores, outcome)
            ax.plot(cov, risk, linewidth=0.8, alpha=0.6, label=name)
        for name, probs in calibrated.items():
            cov, risk = metrics.risk_coverage(probs, outcome)
            ax.plot(cov, risk, linewidth=2.2, label=f"calibrated ({name})")
        ax.set_xlabel("coverage (share of responses kept)")
        ax.set_ylabel("risk (share of kept responses that are wrong)")
        ax.set_title("Risk-coverage: " + _title(self.setting))
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        paths.append(folder / "risk_coverage.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        if calibrated:
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
            for name, probs in calibrated.items():
                table = [b for b in metrics.reliability(probs, outcome) if b.count]
                ax.plot(
                    [b.confidence for b in table],
                    [b.accuracy for b in table],
                    marker="o",
                    label=f"{name} (ECE {metrics.ece(probs, outcome):.3f})",
                )
            ax.set_xlabel("mean calibrated confidence in bin")
            ax.set_ylabel("share correct in bin")
            ax.set_title("Reliability: " + _title(self.setting))
            ax.legend(fontsize=7)
            fig.tight_layout()
            paths.append(folder / "reliability.png")
            fig.savefig(paths[-1], dpi=110)
            plt.close(fig)
        return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _title(setting: Mapping[str, Any]) -> str:
    where = f"{setting.get('dataset')}/{setting.get('setting')}"
    return f"{where} {setting.get('split')} (n={setting.get('n')})"


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The report as Markdown."""
    setting = result["setting"]
    lines = [f"# Evaluation: {_title(setting)}", "", "## Setting", ""]
    lines += [f"- **{k}**: {v}" for k, v in setting.items()]
    lines += ["", "## Summary", ""]
    lines += [f"- {k}: {_f(v)}" for k, v in result["summary"].items()]
    lines += [
        "",
        "## Scores for correctness",
        "",
        "AUROC over all responses (a right answer, or an abstention on an unanswerable "
        "question), AUROC among the model's answers only, and that one's two tasks: *reading* "
        "(answers to answerable questions, right vs. wrong) and *answerability* (all answers, "
        "answerable vs. unanswerable question; n/a without unanswerable questions; 0.5 is "
        "blind, and below 0.5 informative the other way round). Then AURC (lower is better), "
        "PRR, and accuracy among the most confident 40% / 80%.",
        "",
        "| score | AUROC | AUROC answered | reading | answerability | AURC | PRR | acc@0.4 | "
        "acc@0.8 | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, block: Mapping[str, Any]) -> str:
        sel = block["selective_accuracy"]
        return (
            f"| {name} | {_f(block['auroc'])} | {_f(block['auroc_answered'])} | "
            f"{_f(block.get('auroc_reading'))} | {_f(block.get('auroc_answerability'))} | "
            f"{_f(block['aurc'])} | {_f(block['prr'])} | {_f(sel['0.4'])} | {_f(sel['0.8'])} | "
            f"{_f(block.get('ece'))} |"
        )

    for name, block in result.get("calibrated", {}).items():
        lines.append(row(f"**calibrated: {name}**", block))
    if "sampling_baseline" in result:
        block = result["sampling_baseline"]
        lines.append(row(f"sampling agreement (N={block['samples']})", block))
    ranked = sorted(result["signals"].items(), key=lambda kv: -_nan_low(kv[1]["auroc"]))
    for name, block in ranked:
        lines.append(row(name, block))
    if ranked:
        top, block = ranked[0]
        lines += [
            "",
            f"Best single signal on this split: {top} ({_f(block['auroc'])}), chosen here, which "
            "favours it (the maximum of many noisy AUROCs).",
        ]
    chosen = result.get("single_chosen_on_calibration")
    if chosen:
        lines.append(
            f"The single signal a deployment without a calibrator would pick, the best on the "
            f"calibration split: {chosen['signal']} ({_f(chosen['calibration_auroc'])} there, "
            f"{_f(chosen['auroc'])} here)."
        )
    risk_rows = [
        (name, block["risk_control"])
        for name, block in result.get("calibrated", {}).items()
        if "risk_control" in block
    ]
    if risk_rows:
        lines += [
            "",
            "## Risk control (threshold chosen on the calibration split)",
            "",
            "| calibrator | target error | delta | feasible | threshold | calibration coverage | "
            "test coverage | test error among answered | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, rc in risk_rows:
            cal = rc["calibration"]
            lines.append(
                f"| {name} | {cal['target_error']} | {cal['delta']} | {cal['feasible']} | "
                f"{_f(cal['threshold'], 4)} | {_f(cal['coverage'])} | {_f(rc['test_coverage'])} | "
                f"{_f(rc['test_error_among_answered'])} ({rc['test_answered']} answered) | "
                f"{rc['target_met']} |"
            )
    if result.get("risk_sweep"):
        lines += [
            "",
            "## Certified coverage at other targets",
            "",
            "The same calibrator's threshold certified on the calibration split at each target "
            "error (same delta), and what it gives on this split.",
            "",
            "| target error | feasible | threshold | calibration coverage | test coverage | "
            "test error among answered | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for entry in result["risk_sweep"]:
            cells = [
                str(entry["target_error"]),
                str(entry["feasible"]),
                _f(entry["threshold"], 4),
                _f(entry["calibration_coverage"]),
                _f(entry["test_coverage"]),
                f"{_f(entry['test_error_among_answered'])} ({entry['test_answered']} answered)",
                str(entry["target_met"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if "policy" in result:
        policy = result["policy"]
        lines += ["", "## Policy", ""]
        lines += [f"- {k}: {_f(v) if not isinstance(v, dict) else v}" for k, v in policy.items()]
    cost = result["cost"]
    lines += ["", "## Cost", ""]
    lines += [f"- median seconds: {cost['median_seconds']}"]
    lines += [
        "- signals (generation + no-passage score + abstention probe + text and embedding "
        "signals) over plain generation, "
        f"median: {_f(cost.get('signals_over_generation_median'))}"
    ]
    if "sampling_over_generation_median" in cost:
        lines += [
            "- sampling baseline over plain generation, median: "
            f"{_f(cost['sampling_over_generation_median'])} (extra, on top of the greedy answer)"
        ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _nan_low(value: float) -> float:
    return -1.0 if value is None or math.isnan(value) else value
