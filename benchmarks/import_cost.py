"""What starting guardrail costs: wall time and peak resident memory of short commands that
never touch a model (importing the packages, ``guardrail --help``, ``guardrail policy check``,
importing the service's app factory).

Each command runs as a fresh process, ``--repeats`` times; the median time and the median
peak RSS are reported. With ``--compare DIR`` the same commands also run against another
source tree (for example an older checkout: ``git worktree add ../before REV``), alternating
with this one, so that both see the same machine load; the ratios are the comparison.

    .venv/bin/python benchmarks/import_cost.py [--compare ../before] [--repeats 7]

Writes benchmarks/results/import_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS: dict[str, list[str]] = {
    "import guardrail, policies": ["-c", "import guardrail, policies"],
    "guardrail --help": ["-m", "guardrail.cli", "--help"],
    "guardrail policy check balanced": ["-m", "guardrail.cli", "policy", "check", "balanced"],
    "import service (app factory)": ["-c", "from service import create_app"],
}
HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "sklearn", "langchain_core")


def run_once(args: list[str], tree: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one fresh interpreter running ``args`` in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=tree, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}")
    return seconds, usage.ru_maxrss / 1024  # kilobytes on Linux


def heavy_modules(tree: Path) -> list[str]:
    """Which heavy packages ``import guardrail, policies`` loads in ``tree``."""
    code = (
        "import sys, guardrail, policies; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="another source tree, run side by side")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/import_cost.json")
    args = parser.parse_args()
    trees = {"this tree": ROOT}
    if args.compare:
        trees["compared tree"] = args.compare.resolve()
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {label: [] for label in COMMANDS} for name in trees
    }
    for _ in range(args.repeats):
        for label, command in COMMANDS.items():
            for name, tree in trees.items():  # alternate, so both see the same load
                samples[name][label].append(run_once(command, tree))
    results: dict[str, object] = {"repeats": args.repeats, "python": sys.version.split()[0]}
    for name, tree in trees.items():
        results[name] = {
            "tree": str(tree),
            "heavy_modules_on_import": heavy_modules(tree),
            "commands": {
                label: {
                    "median_seconds": round(statistics.median(s for s, _ in runs), 3),
                    "median_peak_rss_mib": round(statistics.median(m for _, m in runs), 1),
                }
                for label, runs in samples[name].items()
            },
        }
    if args.compare:
        this, other = samples["this tree"], samples["compared tree"]
        results["ratio this/compared (median time, median RSS)"] = {
            label: [
                round(
                    statistics.median(s for s, _ in this[label])
                    / statistics.median(s for s, _ in other[label]),
                    3,
                ),
                round(
                    statistics.median(m for _, m in this[label])
                    / statistics.median(m for _, m in other[label]),
                    3,
                ),
            ]
            for label in COMMANDS
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
