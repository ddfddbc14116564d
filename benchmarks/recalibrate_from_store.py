"""Recalibration from the service's own labels, end to end with the real model.

``guardrail serve`` (embedded defaults: Gemma-3-270M, dtype auto, the balanced policy with no
escalation model configured, a SQLite store) answers N SQuAD 2.0 dev questions, each with its
gold paragraph as the passage, over HTTP as one tenant; the labels are posted back with
``/v1/feedback/batch`` (right: token F1 >= 0.5 against a gold answer; for the model's own
abstention, right when the question is unanswerable); then ``guardrail calibrate
--from-store`` fits on that tenant's labelled decisions, and the before (the balanced policy
and its heuristic confidence, as recorded) and after (the recalibrated confidence at its
certified threshold) are compared on the labels it held back, at several targets.

    python benchmarks/recalibrate_from_store.py --n 400 [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
from serving import free_port, guardrail_command, start, stop
from tqdm import tqdm

from guardrail.evaluation.datasets import load_items, split_items
from guardrail.evaluation.scoring import answer_correct
from service.recalibrate import RecalibrationError, needs, recalibrate, select
from service.store import SqliteStore

KEY = "sk-bench"
TENANT = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/recalibrate_from_store_n800.json")
    )
    args = parser.parse_args()
    items, setting = load_items("squad2", "gold", args.data_dir)
    # The test split of the evaluation harness: the bundled calibrated policies were fitted
    # on the calibration split, and nothing here is fitted on what it is compared on.
    chosen = split_items(items, "test", args.n, args.seed)
    work = Path(tempfile.mkdtemp(prefix="guardrail-recalibrate-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "GUARDRAIL_STORE_PATH": str(work / "decisions.sqlite"),
        "GUARDRAIL_RATE_LIMIT_PER_MINUTE": "0",
        "GUARDRAIL_API_KEYS": json.dumps({KEY: TENANT}),
        "GUARDRAIL_ESCALATION_TARGETS": "{}",
    }
    command = guardrail_command("serve", "--port", str(port), "--policy", "balanced")
    server = start(command, base=base, env=env, log=work / "server.log")
    headers = {"Authorization": f"Bearer {KEY}"}
    labels: list[dict[str, Any]] = []
    actions: dict[str, int] = {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            for item in tqdm(chosen, desc="questions", unit="q"):
                body = {
                    "question": item.question,
                    "passages": [{"id": p.id, "text": p.text} for p in item.passages],
                }
                reply = client.post("/v1/answer", json=body)
                reply.raise_for_status()
                record = reply.json()
                actions[record["policy_action"]] = actions.get(record["policy_action"], 0) + 1
                abstained = "model_abstained" in record["flags"]
                right = (
                    item.unanswerable
                    if abstained
                    else answer_correct(record["answer"], item.answers, item.unanswerable)
                )
                labels.append({"decision_id": record["id"], "correct": right})
            for start_at in range(0, len(labels), 1000):
                batch = client.post(
                    "/v1/feedback/batch", json={"items": labels[start_at : start_at + 1000]}
                )
                batch.raise_for_status()
                assert batch.json()["refused"] == 0, batch.text
    finally:
        stop(server)
    store = SqliteStore(work / "decisions.sqlite")
    selection = select(store.labelled(), TENANT, None)
    store.close()
    command = subprocess.run(
        guardrail_command(
            "calibrate",
            "--from-store",
            "--store",
            str(work / "decisions.sqlite"),
            "--tenant",
            TENANT,
            "--policy",
            "balanced",
            "--out",
            str(work / "bench"),
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    print(command.stdout, command.stderr)
    results = []
    for target in args.targets:
        need = needs(target, 0.1, fit_share=0.5, holdout_share=0.2)
        try:
            result = recalibrate(selection, target_error=target, hedge_target_error=None, delta=0.1)
        except RecalibrationError as exc:
            results.append({"target_error": target, "refused": str(exc)})
            print(json.dumps(results[-1]), flush=True)
            continue
        c = result.comparison
        results.append(
            {
                "target_error": target,
                "delta": 0.1,
                "labelled_answers_needed": need.total,
                "certified": result.answer.message,
                "certified_coverage": result.answer.coverage if result.answer.feasible else 0.0,
                "threshold": result.answer.threshold,
                "held_back": c.n,
                "before": {
                    "auroc": c.before_auroc,
                    "coverage": c.before_coverage,
                    "error_among_answered": c.before_error,
                },
                "after": {
                    "auroc": c.after_auroc,
                    "coverage": c.after_coverage,
                    "error_among_answered": c.after_error,
                },
            }
        )
        print(json.dumps(results[-1]), flush=True)
    right = sum(label["correct"] for label in labels)
    out = {
        "setting": (
            f"guardrail serve, embedded defaults (Gemma-3-270M, dtype auto), policy balanced "
            f"without an escalation model, SQLite store; squad2/{setting} split=test "
            f"seed={args.seed} n={len(chosen)}, the gold paragraph as the passage; labels: "
            "token F1 >= 0.5 against a gold answer, an abstention right when unanswerable; "
            "guardrail calibrate --from-store defaults (logistic, binomial, delta 0.1, "
            "held back 20%, fit share 0.5, seed 0)"
        ),
        "questions": len(chosen),
        "labelled_right": right,
        "policy_actions": actions,
        "left_out": selection.left_out,
        "command_output": command.stdout.splitlines(),
        "command_exit": command.returncode,
        "targets": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
