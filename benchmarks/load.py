"""Load on the real service: 1, 4 and 8 concurrent clients, side by side in one run.

Starts ``guardrail serve`` (embedded mode, the real Gemma-3-270M, the demo index, a fresh
SQLite store) as a subprocess, waits for ``/readyz``, then for each client count sends the
same fixed list of demo-corpus questions over HTTP (``POST /v1/answer``), the clients taking
questions from a shared list until it is empty. Reports per level: throughput (questions per
second of wall time), latency p50/p95/p99, errors by status, and the service's overhead
(client-measured wall time minus the pipeline's own ``timings.total``, median, at one
client, where no question waits in the queue: HTTP, JSON, admission, the store write), next
to the HTTP floor (the median round trip of ``GET /healthz`` from the same client). The
server's resident memory is read from ``/proc`` when ready and after each level.

    python benchmarks/load.py [--questions 24] [--clients 1 4 8] [--out FILE] [-- SERVE ARGS]

Absolute times on a shared machine are noisy: read the ratios between levels, which are
measured in the same run against the same server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from serving import free_port, guardrail_command, start, stop

QUESTIONS = [
    "When did the 1973 oil crisis begin?",
    "Which countries did OAPEC target with the oil embargo?",
    "What is the capital of Kenya?",
    "Who won Super Bowl 50?",
    "Where was Super Bowl 50 played?",
    "Who was Nikola Tesla's employer in New York?",
    "When did the Black Death reach Europe?",
    "What does a chloroplast do?",
    "Who founded the Mongol Empire?",
    "What river flows through Basel?",
    "When was Harvard University founded?",
    "Who were the Huguenots?",
    "What is a prime number?",
    "What is packet switching?",
    "Who was Martin Luther?",
    "Where is Fresno?",
    "What is the IPCC?",
    "When did the Apollo program end?",
    "Who invented the steam engine?",
    "What is civil disobedience?",
    "What is the largest city in Southern California?",
    "What language do the Normans descend from?",
    "When was the Scottish Parliament reconvened?",
    "Which element has the symbol O?",
]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def run_level(base: str, questions: list[str], clients: int) -> dict[str, Any]:
    """Send every question once, ``clients`` at a time; what came back."""
    pending = list(reversed(questions))
    lock = threading.Lock()
    rows: list[dict[str, Any]] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    question = pending.pop()
                start = time.perf_counter()
                response = http.post("/v1/answer", json={"question": question})
                wall = time.perf_counter() - start
                row: dict[str, Any] = {"status": response.status_code, "wall": wall}
                if response.status_code == 200:
                    record = response.json()
                    row["pipeline"] = float(record["timings"].get("total", 0.0))
                    row["action"] = record["action"]
                    row["escalated"] = bool(record.get("escalated"))
                with lock:
                    rows.append(row)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ok = [r for r in rows if r["status"] == 200]
    walls = [r["wall"] for r in ok]
    errors: dict[str, int] = {}
    for r in rows:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    return {
        "clients": clients,
        "questions": len(rows),
        "seconds": round(wall, 2),
        "throughput_qps": round(len(ok) / wall, 4),
        "p50_s": round(percentile(walls, 50), 2),
        "p95_s": round(percentile(walls, 95), 2),
        "p99_s": round(percentile(walls, 99), 2),
        "errors": errors,
        "escalated": sum(1 for r in ok if r["escalated"]),
        # Wall time minus the pipeline's own: the service's overhead at one client; with more
        # clients mostly the wait in the queue.
        ("overhead_ms_median" if clients == 1 else "wait_ms_median"): round(
            1000 * statistics.median(r["wall"] - r["pipeline"] for r in ok), 2
        )
        if ok
        else None,
    }


def http_floor_ms(base: str, n: int = 200) -> float:
    """Median wall time of ``GET /healthz`` from the same client: the HTTP round trip of a
    trivial route (client, loopback, server stack), part of every request's overhead."""
    walls = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for _ in range(n):
            start = time.perf_counter()
            http.get("/healthz")
            walls.append(time.perf_counter() - start)
    return round(1000 * statistics.median(walls), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    parser.add_argument("serve_args", nargs="*", help="extra `guardrail serve` arguments")
    args = parser.parse_args()
    questions = (QUESTIONS * (1 + args.questions // len(QUESTIONS)))[: args.questions]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="guardrail-load-"))
    env = {
        "GUARDRAIL_STORE_PATH": str(work / "decisions.sqlite"),
        "GUARDRAIL_RATE_LIMIT_PER_MINUTE": "0",
        # Room for every client to wait: the levels measure queueing, not refusals.
        "GUARDRAIL_MAX_QUEUED_QUESTIONS": str(max(args.clients) + 1),
    }
    command = guardrail_command("serve", "--port", str(port), *args.serve_args)
    server = start(command, base=base, env=env, log=work / "server.log")
    try:
        rss_ready = rss_mib(server.pid)
        floor = http_floor_ms(base)
        # One question first: lazy parts (the verifier, the first prefix cache) warm up.
        httpx.post(f"{base}/v1/answer", json={"question": QUESTIONS[0]}, timeout=600)
        levels = []
        for clients in args.clients:
            print(f"{clients} client(s), {len(questions)} questions ...", flush=True)
            level = run_level(base, questions, clients)
            level["rss_mib_after"] = round(rss_mib(server.pid), 1)
            print(json.dumps(level), flush=True)
            levels.append(level)
        single = next((lv for lv in levels if lv["clients"] == 1), None)
        for level in levels:
            if single and single["throughput_qps"]:
                level["throughput_vs_1"] = round(
                    level["throughput_qps"] / single["throughput_qps"], 2
                )
        result = {
            "setting": (
                "guardrail serve, embedded defaults (Gemma-3-270M, dtype auto, demo index, "
                "balanced policy, SQLite store), rate limit off, "
                f"{len(questions)} demo-corpus questions per level, POST /v1/answer"
            ),
            "serve_args": args.serve_args,
            "cpus": os.cpu_count(),
            "rss_mib_ready": round(rss_ready, 1),
            "http_floor_ms_median": floor,
            "levels": levels,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        stop(server)


if __name__ == "__main__":
    main()
