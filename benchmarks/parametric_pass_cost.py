"""Cost of the no-passage ``score`` pass next to the contextual generation it accompanies.

Setting: 20 SQuAD 2.0 dev questions (seed 0, from ``../shared/data/squad2_dev``) with their own
paragraph as the only passage, Gemma-3-270M (CPU, greedy, the few-shot prompt of
``guardrail.prompts``), in bfloat16 (the default) and float32, one after the other in the same
run. For each question: time the contextual generation and the single teacher-forced
parametric pass side by side, report the median ratio; also the model load time from the
converted cache folder and the peak resident memory of the process.

    python benchmarks/parametric_pass_cost.py [--data ../shared/data] [--n 20] [--seed 0]

Writes ``benchmarks/results/parametric_pass_cost.json`` and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import resource
import statistics
import time
from pathlib import Path

import torch

from guardrail.backends import TransformersBackend
from guardrail.config import GuardrailConfig
from guardrail.models import prepare_model
from guardrail.prompts import FewShotPrompt
from retrievers import Passage

RESULTS = Path(__file__).parent / "results" / "parametric_pass_cost.json"


def load_squad2(data: Path, n: int, seed: int) -> list[tuple[str, Passage]]:
    """``n`` questions with their paragraphs, drawn with ``seed``."""
    contexts = {}
    for line in (data / "squad2_dev" / "contexts.jsonl").read_text().splitlines():
        row = json.loads(line)
        contexts[row["context_id"]] = row
    questions = [json.loads(x) for x in (data / "squad2_dev" / "questions.jsonl").open()]
    random.Random(seed).shuffle(questions)
    out = []
    for q in questions[:n]:
        c = contexts[q["context_id"]]
        out.append((q["question"], Passage(c["context_id"], c["text"], "squad2", c["title"])))
    return out


def measure(folder: Path, dtype: str, items: list[tuple[str, Passage]]) -> dict[str, object]:
    """Load the model in ``dtype`` and time both passes on every item."""
    start = time.perf_counter()
    backend = TransformersBackend(folder, name="gemma-3-270m", dtype=dtype).load()
    load_seconds = time.perf_counter() - start
    prompts = FewShotPrompt()
    # One warm-up question (first-call allocations and the prefix caches), not measured.
    warm_q, warm_p = items[0]
    warm = backend.generate(prompts.contextual(warm_q, [warm_p]))
    backend.score(prompts.parametric(warm_q), warm.stats.token_ids)
    rows: list[dict[str, float | str]] = []
    for question, passage in items:
        generation = backend.generate(prompts.contextual(question, [passage]))
        start = time.perf_counter()
        backend.score(prompts.parametric(question), generation.stats.token_ids)
        score_seconds = time.perf_counter() - start
        rows.append(
            {
                "question": question,
                "answer": generation.text,
                "prompt_tokens": generation.prompt_tokens,
                "answer_tokens": len(generation.stats),
                "generate_seconds": generation.seconds,
                "score_seconds": score_seconds,
                "ratio": score_seconds / generation.seconds,
            }
        )

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    return {
        "median_ratio_score_to_generate": median("ratio"),
        "median_generate_seconds": median("generate_seconds"),
        "median_score_seconds": median("score_seconds"),
        "median_prompt_tokens": median("prompt_tokens"),
        "median_answer_tokens": median("answer_tokens"),
        "model_load_seconds_from_cache": load_seconds,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = GuardrailConfig()
    folder = prepare_model(config.cache_dir, "gemma-3-270m")
    items = load_squad2(args.data, args.n, args.seed)
    summary: dict[str, object] = {
        "setting": {
            "data": f"SQuAD 2.0 dev, {args.n} questions, seed {args.seed}, gold paragraph only",
            "model": "gemma-3-270m (CPU, greedy, few-shot prompt, prefix cache on)",
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
    }
    for dtype in ("bfloat16", "float32"):
        result = measure(folder, dtype, items)
        # ru_maxrss is the process's peak so far: exact for the first dtype measured, the
        # peak over both for the second (the first model is released before it loads).
        result["peak_rss_mib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary[dtype] = result
        gc.collect()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    b, f = summary["bfloat16"], summary["float32"]
    assert isinstance(b, dict) and isinstance(f, dict)
    print("| measure | bfloat16 (default) | float32 |\n| --- | --- | --- |")
    for key, label, unit in (
        ("median_ratio_score_to_generate", "median score/generate time ratio", ""),
        ("median_generate_seconds", "median contextual generation", " s"),
        ("median_score_seconds", "median parametric score pass", " s"),
        ("median_prompt_tokens", "median prompt tokens", ""),
        ("median_answer_tokens", "median answer tokens", ""),
        ("model_load_seconds_from_cache", "model load from cache", " s"),
    ):
        print(f"| {label} | {b[key]:.3g}{unit} | {f[key]:.3g}{unit} |")
    print(
        f"| peak resident memory | {b['peak_rss_mib_so_far']:.0f} MiB | "
        f"{f['peak_rss_mib_so_far']:.0f} MiB (peak of both runs) |"
    )


if __name__ == "__main__":
    main()
