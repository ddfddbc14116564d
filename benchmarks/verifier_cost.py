"""What the verifier costs next to a plain generation, side by side in one run.

    .venv/bin/python benchmarks/verifier_cost.py [--n 20] [--data ../shared/data]

For N SQuAD 2.0 dev questions (the harness's ``test`` half, seed 0) with the top-3 passages
from the default demo index (the default settings: 160 words per passage shown), each
question is timed twice, one after the other: the embedded generator's contextual generation
(``generate``, as the pipeline calls it) and the verifier's ``score`` of that answer (its
encoding cache off, so nothing is reused between questions). Reports medians and the median of
the per-question ratios; absolute times on a shared machine are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardrail.config import GuardrailConfig  # noqa: E402
from guardrail.evaluation.datasets import load_items, split_items  # noqa: E402
from guardrail.pipeline import Guardrail  # noqa: E402
from guardrail.prompts import prompt_for  # noqa: E402
from guardrail.verifier import Verifier, VerifierModel  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/verifier_cost.json")
    args = parser.parse_args()
    config = GuardrailConfig(escalation_targets={})
    guard = Guardrail.from_config(config)
    verifier = Verifier(VerifierModel.load(), cache=0)
    items, _ = load_items("squad2", "open", args.data)
    items = split_items(items, "test", args.n, 0)
    prompts = prompt_for(guard.backend, config.max_passage_words)
    # Warm up both (model loading is not what is measured).
    warm = guard.retrieve(items[0].question)
    guard.backend.generate(prompts.contextual(items[0].question, warm), max_new_tokens=4)
    verifier.score(items[0].question, [p.text for p in warm], "x")
    rows = []
    for i, item in enumerate(items):
        passages = guard.retrieve(item.question)
        texts = [p.text for p in passages]
        start = time.perf_counter()
        answer = guard.backend.generate(
            prompts.contextual(item.question, passages), max_new_tokens=config.max_new_tokens
        ).text
        generate = time.perf_counter() - start
        start = time.perf_counter()
        verifier.score(item.question, texts, answer, max_words=config.max_passage_words)
        timings = {"generate": generate, "verify": time.perf_counter() - start}
        rows.append(timings)
        print(f"{i + 1}/{len(items)} " + " ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    result = {
        "setting": {
            "questions": f"squad2 dev open retrieval, test half, n={len(items)}, seed 0",
            "top_k": config.top_k,
            "max_passage_words": config.max_passage_words,
            "generator": config.generator,
            "dtype": config.dtype,
            "threads": "torch default",
        },
        "median_generate_s": round(statistics.median(r["generate"] for r in rows), 3),
        "median_verify_s": round(statistics.median(r["verify"] for r in rows), 3),
        "median_ratio": round(statistics.median(r["verify"] / r["generate"] for r in rows), 3),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
