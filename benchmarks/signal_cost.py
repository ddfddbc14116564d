"""What the confidence signals cost next to plain generation, measured side by side.

Setting: ``--n`` SQuAD 2.0 dev questions (default 30) from the calibration split (seed 0,
half unanswerable) with their own paragraph, Gemma-3-270M on the CPU, greedy, the few-shot
prompt, passages cut to 300 words. Two copies of the model are loaded, each with its own
prefix cache: one only generates (what the wrapped bot does anyway), the other runs the
pipeline's whole ``assess`` step (generation, abstention probe, no-passage score pass, text
and embedding signals, confidence). Each question goes through both, in alternating order,
so that drift in the shared machine's speed hits both alike; the report is the median of the
per-question ratios.

    .venv/bin/python benchmarks/signal_cost.py [--data-dir ../shared/data] [--n 30]

Writes ``benchmarks/results/signal_cost.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from guardrail.config import GuardrailConfig
from guardrail.evaluation.datasets import load_items, split_items
from guardrail.pipeline import Guardrail, local_backend
from guardrail.prompts import prompt_for
from retrievers import Passage

RESULTS = Path(__file__).parent / "results" / "signal_cost.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = GuardrailConfig(max_passage_words=300)
    items, _ = load_items("squad2", "gold", args.data_dir)
    items = split_items(items, "calibrate", args.n, args.seed)
    guard = Guardrail.from_config(config, with_index=False)
    plain = local_backend(config, config.generator)
    prompts = prompt_for(plain, config.max_passage_words)

    def generate_only(question: str, passages: list[Passage]) -> float:
        start = time.perf_counter()
        plain.generate(prompts.contextual(question, passages), max_new_tokens=config.max_new_tokens)
        return time.perf_counter() - start

    def assess(question: str, passages: list[Passage]) -> float:
        start = time.perf_counter()
        guard.assess(guard.backend, question, passages)
        return time.perf_counter() - start

    # Warm-up (model loads, first-call allocations, the few-shot prefix caches, the
    # embedder), not measured.
    first = items[0]
    generate_only(first.question, list(first.passages or ()))
    assess(first.question, list(first.passages or ()))
    rows: list[dict[str, float]] = []
    for i, item in enumerate(items):
        passages = list(item.passages or ())
        if i % 2 == 0:
            g = generate_only(item.question, passages)
            a = assess(item.question, passages)
        else:
            a = assess(item.question, passages)
            g = generate_only(item.question, passages)
        rows.append({"generate": g, "assess": a, "ratio": a / g})
    result = {
        "setting": {
            "data": f"SQuAD 2.0 dev, calibration split, {args.n} questions, seed {args.seed}, "
            "gold paragraph",
            "model": f"{config.generator} ({config.dtype}, CPU, greedy, few-shot prompt, "
            "300 words per passage)",
            "torch_threads": torch.get_num_threads(),
        },
        "median_generate_seconds": statistics.median(r["generate"] for r in rows),
        "median_assess_seconds": statistics.median(r["assess"] for r in rows),
        "median_ratio_assess_to_generate": statistics.median(r["ratio"] for r in rows),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.n} questions: median plain generation {result['median_generate_seconds']:.3f} s, "
        f"median assess {result['median_assess_seconds']:.3f} s, median ratio "
        f"{result['median_ratio_assess_to_generate']:.3f}"
    )


if __name__ == "__main__":
    main()
