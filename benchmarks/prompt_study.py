"""Prompt study on the CALIBRATION half of SQuAD 2.0 dev (never the test half): how often the
embedded model abstains on answerable and on unanswerable questions, and how often it is
right, under a few few-shot prompt variants.

    .venv/bin/python benchmarks/prompt_study.py [--n 60] [--data-dir ../shared/data]

Writes benchmarks/results/prompt_study.json. Gold paragraph, Gemma-3-270M, bfloat16, greedy,
max 300 words per passage, seed 0 (the split `guardrail eval --split calibrate` uses).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tqdm import tqdm

from guardrail.assessment import is_abstention
from guardrail.config import GuardrailConfig
from guardrail.evaluation.datasets import load_items, split_items
from guardrail.evaluation.scoring import outcome_correct
from guardrail.pipeline import local_backend
from guardrail.prompts import _EXAMPLES, ABSTAIN_WORD, FewShotPrompt

INSTRUCTION = (
    "Answer each question with a short phrase copied from its context. If the context does "
    f"not contain the answer, write {ABSTAIN_WORD}."
)
EVEREST = (
    "Mount Everest, on the border of Nepal and China, is 8,849 metres high. It was first "
    "climbed in 1953 by Edmund Hillary and Tenzing Norgay.",
    "Who was the first woman to climb Mount Everest?",
    ABSTAIN_WORD,
)

VARIANTS = {
    "current (3 examples, 1 abstains)": FewShotPrompt(max_passage_words=300),
    "instruction + current examples": FewShotPrompt(max_passage_words=300, instruction=INSTRUCTION),
    "instruction + 4 examples, 2 abstain, last abstains": FewShotPrompt(
        max_passage_words=300, instruction=INSTRUCTION, examples=(*_EXAMPLES, EVEREST)
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prompt_study.json"))
    args = parser.parse_args()
    items, _ = load_items("squad2", "gold", args.data_dir)
    chosen = split_items(items, "calibrate", args.n, seed=0)
    config = GuardrailConfig()
    backend = local_backend(config, config.generator)
    results = {}
    for name, prompt in VARIANTS.items():
        rows = []
        for item in tqdm(chosen, desc=name[:40], unit="q"):
            passages = list(item.passages or ())
            generation = backend.generate(
                prompt.contextual(item.question, passages), max_new_tokens=24
            )
            abstained = is_abstention(generation.text)
            rows.append(
                {
                    "unanswerable": item.unanswerable,
                    "abstained": abstained,
                    "correct": outcome_correct(
                        answered=not abstained,
                        prediction=generation.text,
                        answers=item.answers,
                        unanswerable=item.unanswerable,
                    ),
                    "seconds": generation.seconds,
                }
            )
        answerable = [r for r in rows if not r["unanswerable"]]
        unanswerable = [r for r in rows if r["unanswerable"]]
        results[name] = {
            "response_accuracy": statistics.mean(r["correct"] for r in rows),
            "accuracy_answerable": statistics.mean(r["correct"] for r in answerable),
            "abstention_rate_answerable": statistics.mean(r["abstained"] for r in answerable),
            "abstention_rate_unanswerable": statistics.mean(r["abstained"] for r in unanswerable),
            "median_seconds": statistics.median(r["seconds"] for r in rows),
        }
        print(name, json.dumps(results[name]))
    setting = {
        "data": "SQuAD 2.0 dev, calibration half, gold paragraph",
        "n": args.n,
        "seed": 0,
        "model": config.generator,
        "dtype": config.dtype,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setting": setting, "variants": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
