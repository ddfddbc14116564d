"""Resident memory of the real service over many questions: does it stay bounded?

Starts ``guardrail serve`` (embedded mode, the real Gemma-3-270M, the demo index, a fresh
SQLite store) as a subprocess, then sends N distinct questions one at a time over HTTP
(``POST /v1/answer``): SQuAD 2.0 dev questions drawn with a seed, asked against the demo
corpus (open retrieval; most are not in it, which is fine: memory is what is measured). The
server's resident memory (VmRSS from ``/proc``) is read when ready and after every
``--every`` questions. Distinct questions, so the response cache never answers.

By default the policy is ``balanced`` with escalation replaced by defer (a question at ~10 s
of the larger model would make 1,000 questions take hours here); the escalation model is
still prepared at start-up (built, never asked), so what that holds is in every figure.
``--no-escalation-model`` starts the service without escalation targets, which says how much
that costs; ``--with-escalation`` keeps ``balanced`` as it is (questions escalate to the
larger model), which says what its first use adds (``rss_mib_after_first_escalation``).

    python benchmarks/memory.py [--questions 1000] [--every 50] [--seed 0] [--out FILE]
                                [--no-escalation-model | --with-escalation] [--data DIR]

Reports: RSS when ready, after the first question (the lazy parts: the verifier, the first
prompt caches), at each checkpoint, and the growth per 100 questions fitted (least squares)
over the second half of the run, where start-up effects are over.

``--trim`` asks, at each checkpoint, how much of that memory is free heap the C allocator
keeps: it calls ``malloc_trim(0)`` inside the server through gdb (Debian's ``gdb``; the
server's glibc) and reads RSS again (``rss_mib_after_trim``). The trim changes what follows
(the heap grows back), so a run with it measures that and not the plain growth.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from load import rss_mib
from serving import free_port, guardrail_command, start, stop

NO_ESCALATION_POLICY = """\
version: 1
extends: balanced
name: balanced-no-escalation
description: balanced, with defer where it would escalate (memory benchmark).
thresholds: {otherwise: defer}
"""


def draw_questions(data: Path, n: int, seed: int) -> list[str]:
    """``n`` distinct SQuAD 2.0 dev questions, drawn with ``seed``."""
    seen: dict[str, None] = {}
    for line in (data / "squad2_dev" / "questions.jsonl").open(encoding="utf-8"):
        text = json.loads(line)["question"].strip()
        if text:
            seen.setdefault(text, None)
    questions = sorted(seen)
    if n > len(questions):
        raise SystemExit(f"only {len(questions)} distinct questions; asked for {n}")
    return random.Random(seed).sample(questions, n)


def slope_per_100(points: list[tuple[int, float]]) -> float:
    """Least-squares growth of RSS (MiB) per 100 questions over ``points`` (NaN with fewer
    than two)."""
    if len(points) < 2:
        return float("nan")
    return 100 * statistics.linear_regression(*zip(*points, strict=True)).slope


def trim_heap(pid: int) -> None:
    """``malloc_trim(0)`` in process ``pid``, called through gdb: glibc hands the free pages
    at the top of each heap and inside its free chunks back to the system."""
    done = subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or "$1 =" not in done.stdout:
        raise SystemExit(f"gdb could not call malloc_trim in {pid}: {done.stderr.strip()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    arm = parser.add_mutually_exclusive_group()
    arm.add_argument("--no-escalation-model", action="store_true")
    arm.add_argument("--with-escalation", action="store_true")
    parser.add_argument(
        "--trim",
        action="store_true",
        help="at each checkpoint, call malloc_trim(0) in the server (through gdb) and read RSS "
        "again: how much of it is free heap",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.json"))
    args = parser.parse_args()
    if args.trim and shutil.which("gdb") is None:
        parser.error("--trim needs gdb (apt-get install gdb)")
    questions = draw_questions(args.data, args.questions, args.seed)
    work = Path(tempfile.mkdtemp(prefix="guardrail-memory-"))
    policy = work / "balanced-no-escalation.yaml"
    policy.write_text(NO_ESCALATION_POLICY)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "GUARDRAIL_STORE_PATH": str(work / "decisions.sqlite"),
        "GUARDRAIL_RATE_LIMIT_PER_MINUTE": "0",
    }
    if args.no_escalation_model:
        env["GUARDRAIL_ESCALATION_TARGETS"] = "{}"
    chosen = "balanced" if args.with_escalation else str(policy)
    command = guardrail_command("serve", "--port", str(port), "--policy", chosen)
    started = time.perf_counter()
    server = start(command, base=base, env=env, log=work / "server.log")
    checkpoints: list[dict[str, Any]] = []
    statuses: dict[str, int] = {}
    actions: dict[str, int] = {}
    escalation: dict[str, Any] = {"escalated": 0}
    try:
        ready = rss_mib(server.pid)
        print(f"ready after {time.perf_counter() - started:.0f} s: RSS {ready:.0f} MiB", flush=True)
        run_start = time.perf_counter()
        previous = round(ready, 1)
        with httpx.Client(base_url=base, timeout=600) as http:
            for number, question in enumerate(questions, start=1):
                response = http.post("/v1/answer", json={"question": question})
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                rss = round(rss_mib(server.pid), 1)
                if response.status_code == 200:
                    record = response.json()
                    actions[record["action"]] = actions.get(record["action"], 0) + 1
                    if record.get("escalated"):
                        escalation["escalated"] += 1
                        if escalation["escalated"] == 1:
                            escalation["rss_mib_before_first_escalation"] = previous
                            escalation["rss_mib_after_first_escalation"] = rss
                previous = rss
                if number == 1 or number % args.every == 0 or number == len(questions):
                    checkpoints.append({"questions": number, "rss_mib": rss})
                    elapsed = time.perf_counter() - run_start
                    print(f"{number:5d} questions, {elapsed:6.0f} s: RSS {rss:.0f} MiB", flush=True)
                    if args.trim:
                        trim_heap(server.pid)
                        previous = checkpoints[-1]["rss_mib_after_trim"] = round(
                            rss_mib(server.pid), 1
                        )
                        print(f"{'':29}after malloc_trim: {previous:.0f} MiB", flush=True)
                    # Written at every checkpoint: a run stopped early keeps what it measured.
                    write(args, len(questions), ready, checkpoints, statuses, actions, escalation)
    finally:
        stop(server)
    print(f"wrote {args.out}")


def write(
    args: argparse.Namespace,
    planned: int,
    ready: float,
    checkpoints: list[dict[str, Any]],
    statuses: dict[str, int],
    actions: dict[str, int],
    escalation: dict[str, Any],
) -> None:
    """The result so far, to ``args.out``."""
    done = checkpoints[-1]["questions"]
    half = [(c["questions"], c["rss_mib"]) for c in checkpoints if c["questions"] > done / 2]
    after_first = checkpoints[0]["rss_mib"]
    # A trimmed run's heap grows back after each trim: its slope is not the plain growth.
    growth = float("nan") if args.trim else slope_per_100(half)
    policy = "balanced" if args.with_escalation else "balanced with defer instead of escalate"
    trimmed = [
        c["rss_mib"] - c["rss_mib_after_trim"] for c in checkpoints if "rss_mib_after_trim" in c
    ]
    result = {
        "setting": (
            "guardrail serve, embedded defaults (Gemma-3-270M, dtype auto, demo index, SQLite "
            f"store), {policy}, rate limit off, one client, "
            f"{planned} distinct SQuAD 2.0 dev questions (seed {args.seed}), open "
            "retrieval over the demo corpus, POST /v1/answer"
            + ("; malloc_trim(0) in the server at each checkpoint" if args.trim else "")
        ),
        "escalation_model_prepared": not args.no_escalation_model,
        "questions_done": done,
        "rss_mib_ready": round(ready, 1),
        "rss_mib_after_first": after_first,
        "rss_mib_end": checkpoints[-1]["rss_mib"],
        "rss_mib_max": max(c["rss_mib"] for c in checkpoints),
        # null until the second half has two checkpoints, and with --trim (JSON has no NaN)
        "growth_mib_per_100_second_half": None if math.isnan(growth) else round(growth, 2),
        "statuses": statuses,
        "actions": actions,
        **escalation,
        **({"free_heap_mib_at_checkpoints": [round(t, 1) for t in trimmed]} if trimmed else {}),
        "checkpoints": checkpoints,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
