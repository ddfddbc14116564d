"""Bootstrap interval of the calibrated confidence's AUROC gain over the best single signal.

Reads the cached model runs of one evaluation split (``guardrail eval`` must have run on it,
so no model generates anything here), scores them with a calibrated policy's calibrator and
with the best single signal (oriented as the report orients them; chosen on the test split
itself as the report does, again in every resample, or with ``--baseline calibration`` once on
the calibration split), and resamples the test split's paragraphs with replacement (the
calibrator stays fixed: the interval covers the test sample, not the calibrator's fit):

    .venv/bin/python benchmarks/bootstrap_gain.py --dataset squad2 --setting gold --n 1000 \\
        --policy policies/calibrated/squad2-gold-n1000.yaml \\
        --out benchmarks/results/bootstrap_squad2_gold_n1000.json

Prints and writes the point gain, the 2.5% and 97.5% quantiles of the resampled gains and the
share of resamples whose gain reaches ``--target`` (0.05).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from guardrail.calibration import LogisticCalibrator
from guardrail.config import GuardrailConfig
from guardrail.evaluation.datasets import load_items, split_items
from guardrail.evaluation.metrics import auroc
from guardrail.evaluation.report import best_single, observation, oriented_signals
from guardrail.evaluation.runner import EvalRunner, RecordCache
from guardrail.pipeline import Guardrail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="squad2")
    p.add_argument("--setting", default="gold")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-passage-words", type=int, default=300)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--policy", required=True, help="a calibrated policy (its calibrator is used)")
    p.add_argument(
        "--baseline",
        choices=("test", "calibration"),
        default="test",
        help="choose the single signal on the test split itself (as the report's 'best single "
        "signal') or on the calibration split (as a deployment without a calibrator would)",
    )
    p.add_argument("--calibration-n", type=int, help="size of that calibration split (--n)")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--target", type=float, default=0.05)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    config = GuardrailConfig(
        policy=str(args.policy), max_passage_words=args.max_passage_words, top_k=args.top_k
    )
    all_items, setting = load_items(args.dataset, args.setting, args.data_dir)
    items = split_items(all_items, args.split, args.n, args.seed)
    guard = Guardrail.from_config(config, with_index=any(i.open_retrieval for i in items))
    runner = EvalRunner(guard, RecordCache(config.cache_dir / "eval" / guard.backend.name))
    uncached = [
        i for i in items if runner.cache.record(runner.key(i, runner.passages_for(i)[0])) is None
    ]
    if uncached:
        raise SystemExit(f"{len(uncached)} questions are not cached: run guardrail eval first")
    records = runner.run(items, label=f"{args.dataset}/{setting}/{args.split} (cached)")
    scorer = guard.scorer
    if not isinstance(scorer, LogisticCalibrator):
        raise SystemExit(f"{args.policy} has no calibrator")
    outcome = np.array([r.outcome_correct for r in records])
    calibrated = scorer.predict_proba([observation(r) for r in records])
    if args.baseline == "test":
        chosen = best_single(records)
    else:
        calibration = split_items(all_items, "calibrate", args.calibration_n or args.n, args.seed)
        chosen = best_single(runner.run(calibration, label="calibration split (cached)"))
    if chosen is None:
        raise SystemExit("no single signal separates right from wrong on the chosen split")
    best = chosen[0]
    singles = oriented_signals(records)
    gain = auroc(calibrated, outcome) - auroc(singles[best], outcome)
    # Questions of one paragraph are drawn together and are not independent: resample whole
    # paragraphs. With --baseline test the single signal is chosen again in every resample,
    # as the report chooses it, so the interval includes that choice.
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.group or item.id, []).append(i)
    clusters = list(groups.values())
    rng = np.random.default_rng(args.seed)
    gains = []
    for _ in range(args.resamples):
        picked = rng.integers(0, len(clusters), len(clusters))
        idx = np.array([i for c in picked for i in clusters[c]])
        y = outcome[idx]
        if y.all() or not y.any():
            continue
        if args.baseline == "test":
            single_auroc = max(
                a for a in (auroc(v[idx], y) for v in singles.values()) if np.isfinite(a)
            )
        else:
            single_auroc = auroc(singles[best][idx], y)
        gains.append(auroc(calibrated[idx], y) - single_auroc)
    result = {
        "dataset": args.dataset,
        "setting": setting,
        "split": args.split,
        "n": len(records),
        "seed": args.seed,
        "policy": str(args.policy),
        "calibrated_auroc": auroc(calibrated, outcome),
        "single_signal": best,
        "single_chosen_on": args.baseline,
        "single_auroc": auroc(singles[best], outcome),
        "resampled": f"{len(clusters)} paragraphs (groups), with replacement",
        "gain": gain,
        "resamples": len(gains),
        "interval_95": [float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975))],
        f"share_reaching_{args.target}": float(np.mean(np.array(gains) >= args.target)),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
