"""The service's own overhead per question, apart from any model: wall time seen by a client
minus the pipeline's own time (``timings.total``), with the store write, the rate limit, the
admission gate and the metrics included.

The server runs in a process of its own (``serve``), with the scripted model of the test
suite (``tests/fakes.py``: a real ``GeneratorBackend`` whose next-token table answers
"Paris" in microseconds) behind the real app, the bundled ``balanced`` policy, the verifier,
a SQLite store and a rate limit high enough never to refuse (it is still counted). The
client (this process) sends N questions with one passage, one at a time, after the median
of ``GET /healthz`` (the HTTP round trip of a trivial route) is measured.

    python benchmarks/service_overhead.py [--n 500] [--out FILE.json]

To see where the time goes: ``py-spy record --subprocesses -o profile.svg -- python
benchmarks/service_overhead.py --out /tmp/o.json`` (the server is the subprocess).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"
PASSAGE = {"id": "paris", "text": "Paris is the capital and largest city of France."}


def serve(port: int, folder: Path) -> None:
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
    uvicorn.run(create_app(settings, guard=guard), host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/service_overhead_scripted.json")
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.folder)
        return
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="guardrail-overhead-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--folder", str(folder)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=60) as http:
            body = {"question": QUESTION, "passages": [PASSAGE]}
            for _ in range(20):  # warm-up: the verifier's first encodings, lazy imports
                http.post("/v1/answer", json=body).raise_for_status()
            floors, walls, pipelines = [], [], []
            for _ in range(200):
                start = time.perf_counter()
                http.get("/healthz")
                floors.append(time.perf_counter() - start)
            for _ in range(args.n):
                start = time.perf_counter()
                response = http.post("/v1/answer", json=body)
                walls.append(time.perf_counter() - start)
                response.raise_for_status()
                pipelines.append(float(response.json()["timings"]["total"]))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    overhead = [w - p for w, p in zip(walls, pipelines, strict=True)]
    floor = statistics.median(floors)
    result = {
        "setting": (
            "the real app in its own process (uvicorn, SQLite store, rate limit counted, "
            "balanced policy, the shipped verifier) over the scripted test model; one client, "
            f"{args.n} POST /v1/answer with one passage, one at a time, after 20 warm-up "
            "requests"
        ),
        "cpus": os.cpu_count(),
        "requests": args.n,
        "http_floor_ms_median": round(1000 * floor, 2),
        "wall_ms_median": round(1000 * statistics.median(walls), 2),
        "pipeline_ms_median": round(1000 * statistics.median(pipelines), 2),
        "overhead_ms_median": round(1000 * statistics.median(overhead), 2),
        "overhead_minus_floor_ms_median": round(1000 * (statistics.median(overhead) - floor), 2),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
