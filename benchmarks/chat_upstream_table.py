"""The README's table for ``benchmarks/chat_upstream.sh``, read from its three reports.

    python benchmarks/chat_upstream_table.py N [--reports benchmarks/reports]

For each upstream setting (``benchmarks/reports/upstream-<setting>-nN/report.json``): the
calibrated AUROC (logistic) with and without the Confidence Gain signals, ``cg_mean``'s AUROC
(computed by the guard model, or by the upstream itself through ``echo``), what ``balanced``
delivered and how often it was wrong, the time guarding took against the upstream's own
generation (ratio of the medians, both measured on every question), and the risk control:
the coverage certified at alpha = delta = 0.10 and the loosest target that certifies at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SETTINGS = {
    "chat-logprobs": "chat, with logprobs (token signals: the upstream's; CG: the guard's)",
    "chat-plain": "chat, no logprobs (token and CG signals: the guard's)",
    "completions-echo": "completions with `echo`, no guard (the upstream scores its own answer)",
}
HEADER = (
    "| upstream setting | n (test) | calibrated AUROC (logistic) | without the CG signals "
    "| `cg_mean` AUROC (by) | `balanced`: coverage, error among delivered "
    "| certified at α = δ = 0.10: coverage, test error | loosest target that certifies "
    "| guarding time / upstream generation (ratio of medians) |\n" + "|---" * 9 + "|"
)


def certified(sweep: list[dict[str, Any]]) -> tuple[str, str]:
    """The logistic calibrator's row at target 0.10, and the smallest target it certifies."""
    rows = sorted(
        (r for r in sweep if r["calibrator"] == "logistic" and r["delta"] == 0.1),
        key=lambda r: r["target_error"],
    )
    at_10 = next((r for r in rows if abs(r["target_error"] - 0.1) < 1e-9), None)
    first = next((r for r in rows if r["feasible"]), None)

    def show(row: dict[str, Any] | None) -> str:
        if row is None or not row["feasible"]:
            return "none"
        return f"{row['test_coverage']:.0%}, {row['test_error_among_answered']:.0%}"

    loosest = "none up to " + (f"{rows[-1]['target_error']:.1f}" if rows else "?")
    if first is not None:
        loosest = f"{first['target_error']:.2f} ({show(first)})"
    return show(at_10), loosest


def row(name: str, report: dict[str, Any]) -> str:
    """One table row from a report."""
    calibrated = report["calibrated"]
    cg = report["signals"].get("cg_mean", {}).get("auroc")
    by = "upstream" if name == "completions-echo" else "guard"
    policy = report["policy"]
    seconds = report["cost"]["median_seconds"]
    at_10, loosest = certified(report["risk_sweep"])
    cells = [
        SETTINGS[name],
        str(report["summary"]["n"]),
        f"{calibrated['logistic']['auroc']:.3f}",
        f"{calibrated['logistic without CG']['auroc']:.3f}",
        "n/a" if cg is None else f"{cg:.3f} ({by})",
        f"{policy['coverage']:.0%}, {policy['error_among_answered']:.0%}",
        at_10,
        loosest,
        f"{seconds['parametric_score'] / seconds['generate']:.2f}×",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="questions per split, as given to chat_upstream.sh")
    parser.add_argument("--reports", type=Path, default=Path("benchmarks/reports"))
    args = parser.parse_args()
    lines = [HEADER]
    for name in SETTINGS:
        path = args.reports / f"upstream-{name}-n{args.n}" / "report.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `bash benchmarks/chat_upstream.sh {args.n}`")
        lines.append(row(name, json.loads(path.read_text(encoding="utf-8"))))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
