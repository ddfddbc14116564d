"""Write the labelled mix the default policy's calibrator is fitted on (a user JSONL for
``guardrail calibrate --dataset``), from the shared sets, never from what is reported.

    .venv/bin/python benchmarks/default_policy_mix.py OUT.jsonl [--data ../shared/data]

Candidates (the calibrate command then draws its balanced split from half of them):
- SQuAD 2.0 dev, the evaluation harness's ``calibrate`` half only (seed 0): 300 with the gold
  paragraph and 300 others with open retrieval over the demo index (no ``passages``);
- NQ ``val`` (300) and MuSiQue ``val`` (200) from ``answerability/``, with their passage
  (the verifier was trained on ``train``; ``val2`` stays for reports);
- NQ-open dev (200), open retrieval: real questions the demo corpus mostly cannot answer.
The SQuAD 2.0 dev ``test`` half, the ``val2`` splits, HotpotQA, SelfAware and RAMDocs are left
out: they are what the default is reported on.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guardrail.evaluation.datasets import load_items, split_items  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []

    items, _ = load_items("squad2", "gold", args.data)
    squad = split_items(items, "calibrate", 600, 0)
    for i, it in enumerate(squad):
        row: dict[str, object] = {"id": f"squad2-{it.id}-{'gold' if i < 300 else 'open'}"}
        row["question"] = it.question
        row.update({"unanswerable": True} if it.unanswerable else {"answers": list(it.answers)})
        if i < 300:
            row["passages"] = [p.text for p in it.passages or ()]
        rows.append(row)

    rng = random.Random(0)
    for source, n in (("nq", 300), ("musique", 200)):
        path = args.data / "answerability" / f"{source}.jsonl"
        pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        pairs = [p for p in pairs if p["split"] == "val"]
        rng.shuffle(pairs)
        for p in pairs[:n]:
            row = {
                "id": f"{source}-{p['id']}",
                "question": p["question"],
                "passages": [p["passage"]],
            }
            row.update({"answers": p["answers"]} if p["answerable"] else {"unanswerable": True})
            rows.append(row)

    nq_open = [
        json.loads(line)
        for line in (args.data / "nq_open" / "NQ-open.dev.jsonl").read_text().splitlines()
        if line.strip()
    ]
    rng.shuffle(nq_open)
    for i, q in enumerate(nq_open[:200]):
        rows.append({"id": f"nqopen-{i}", "question": q["question"], "answers": q["answer"]})

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} candidates to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
