"""The service's own overhead per question, apart from any model: wall time seen by a client
minus the pipeline's own time (``timings.total``), with the store write, the rate limit, the
admission gate and the metrics included.

The server runs in a process of its own (``serve``), with the scripted model of the test
suite (``tests/fakes.py``: a real ``GeneratorBackend`` whose next-token table answers
"Paris" in microseconds) behind the real app, the bundled ``balanced`` policy, the verifier,
a SQLite store and a rate limit high enough never to refuse (it is still counted). Two such
servers run side by side: one on uvicorn's pure-Python stack (h11 and asyncio's event
loop), one on what uvicorn picks when ``uvicorn[standard]`` is installed (httptools and
uvloop). The client (this process) sends N questions with one passage to each, alternating,
one at a time, after the median of ``GET /healthz`` (the HTTP round trip of a trivial route)
is measured on each.

    python benchmarks/service_overhead.py [--n 500] [--out FILE.json]

To see where the time goes: ``py-spy record --subprocesses -o profile.svg -- python
benchmarks/service_overhead.py --out /tmp/o.json`` (the server is the subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from serving import free_port, start, stop

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"
PASSAGE = {"id": "paris", "text": "Paris is the capital and largest city of France."}


def serve(port: int, folder: Path, stack: str) -> None:
    """The app over the scripted model, served by uvicorn until SIGTERM."""
    sys.path.insert(0, str(ROOT / "tests"))
    import uvicorn
    from fakes import ScriptedBackend, peaked

    from guardrail.pipeline import Guardrail
    from guardrail.policy_runtime import PolicyRuntime
    from service import ServiceSettings, create_app

    vocab = ("Paris", "Lyon", "unanswerable")
    model = ScriptedBackend(
        vocab, contextual=[peaked(vocab, "Paris", 0.9)], parametric=[peaked(vocab, "Paris", 0.9)]
    )
    guard = Guardrail(backend=model, policy=PolicyRuntime.from_setting("balanced"))
    settings = ServiceSettings(
        cache_dir=folder / "cache", rate_limit_per_minute=1_000_000, port=port
    )
    app = create_app(settings, guard=guard)
    options = {"http": "h11", "loop": "asyncio"} if stack == "python" else {}
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", **options)  # type: ignore[arg-type]


STACKS = ("python", "standard")


def serve_stack(stack: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A server on ``stack`` in its own process, ready."""
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(port), "--folder", str(folder / stack)]
    base = f"http://127.0.0.1:{port}"
    return start([*command, "--stack", stack], base=base, env={}, timeout=300), base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="questions to each server")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/service_overhead_scripted.json")
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stack", choices=STACKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.folder, args.stack)
        return
    folder = Path(tempfile.mkdtemp(prefix="guardrail-overhead-"))
    servers = {stack: serve_stack(stack, folder) for stack in STACKS}
    body = {"question": QUESTION, "passages": [PASSAGE]}
    floors: dict[str, list[float]] = {stack: [] for stack in STACKS}
    walls: dict[str, list[float]] = {stack: [] for stack in STACKS}
    overheads: dict[str, list[float]] = {stack: [] for stack in STACKS}
    clients = {stack: httpx.Client(base_url=servers[stack][1], timeout=60) for stack in STACKS}
    try:
        for stack in STACKS:  # warm-up: the verifier's first encodings, lazy imports
            for _ in range(20):
                clients[stack].post("/v1/answer", json=body).raise_for_status()
        for _ in range(200):
            for stack in STACKS:
                start_at = time.perf_counter()
                clients[stack].get("/healthz")
                floors[stack].append(time.perf_counter() - start_at)
        for _ in range(args.n):
            for stack in STACKS:  # alternating: both see the same machine at the same time
                start_at = time.perf_counter()
                response = clients[stack].post("/v1/answer", json=body)
                wall = time.perf_counter() - start_at
                response.raise_for_status()
                walls[stack].append(wall)
                overheads[stack].append(wall - float(response.json()["timings"]["total"]))
    finally:
        for client in clients.values():
            client.close()
        for server, _ in servers.values():
            stop(server)

    def ms(values: list[float]) -> float:
        return round(1000 * statistics.median(values), 2)

    arms = {
        stack: {
            "http_floor_ms_median": ms(floors[stack]),
            "wall_ms_median": ms(walls[stack]),
            "overhead_ms_median": ms(overheads[stack]),
            "overhead_minus_floor_ms_median": round(ms(overheads[stack]) - ms(floors[stack]), 2),
        }
        for stack in STACKS
    }
    result = {
        "setting": (
            "the real app in its own process (SQLite store, rate limit counted, balanced "
            "policy, the shipped verifier) over the scripted test model; one client, "
            f"{args.n} POST /v1/answer with one passage to each server, alternating, one at "
            "a time, after 20 warm-up requests each; overhead = wall minus timings.total"
        ),
        "stacks": {
            "python": "uvicorn with h11 and asyncio's event loop",
            "standard": "uvicorn[standard]: httptools and uvloop",
        },
        "cpus": os.cpu_count(),
        "requests_per_server": args.n,
        "arms": arms,
        "overhead_ratio_standard_to_python": round(
            arms["standard"]["overhead_ms_median"] / arms["python"]["overhead_ms_median"], 2
        ),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
