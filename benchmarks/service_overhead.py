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

``--baseline DIR`` compares two versions of the code instead of two stacks: DIR is a checkout
of an earlier commit (``git worktree add /tmp/before HEAD~1``), served on the standard stack
beside this checkout's service, alternating the same way.

To see where the time goes: ``py-spy record --subprocesses -o profile.svg -- python
benchmarks/service_overhead.py --out /tmp/o.json`` (the server is the subprocess).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

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


STACK_NAMES = {
    "python": "uvicorn with h11 and asyncio's event loop",
    "standard": "uvicorn[standard]: httptools and uvloop",
}
STACKS = tuple(STACK_NAMES)


def serve_arm(
    folder: Path, stack: str, checkout: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A server on ``stack`` in its own process, ready; with ``checkout``, that checkout's
    code (an earlier commit's worktree) is imported instead of this one's."""
    port = free_port()
    script = (checkout / "benchmarks" / Path(__file__).name) if checkout else Path(__file__)
    env = {"PYTHONPATH": str(checkout)} if checkout else {}
    sub = folder / (f"baseline-{stack}" if checkout else stack)
    command = [sys.executable, str(script), "--serve", str(port), "--folder", str(sub)]
    base = f"http://127.0.0.1:{port}"
    return start([*command, "--stack", stack], base=base, env=env, timeout=300), base


class StdlibClient:
    """``http.client`` over one kept-alive connection: the least a Python client can add."""

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """The response body; raises on any status but 200."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


CLIENTS = ("httpx", "stdlib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="questions to each server")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier commit (git worktree): its service on the standard "
        "stack against this checkout's, instead of the two stacks",
    )
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
    if args.baseline:
        baseline = args.baseline.resolve()
        described = {
            "baseline": f"{STACK_NAMES['standard']}; the code of {baseline}",
            "standard": f"{STACK_NAMES['standard']}; this checkout's code",
        }
        servers = {
            "baseline": serve_arm(folder, "standard", baseline),
            "standard": serve_arm(folder, "standard"),
        }
    else:
        described = dict(STACK_NAMES)
        servers = {stack: serve_arm(folder, stack) for stack in STACKS}
    arms_order = list(servers)
    body = {"question": QUESTION, "passages": [PASSAGE]}
    raw = json.dumps(body).encode()
    series = ("floor", "wall", "overhead")
    times: dict[tuple[str, str, str], list[float]] = {
        (arm, client, kind): [] for arm in arms_order for client in CLIENTS for kind in series
    }
    clients = {arm: httpx.Client(base_url=servers[arm][1], timeout=60) for arm in arms_order}
    stdlib = {arm: StdlibClient(servers[arm][1]) for arm in arms_order}

    def timed(arm: str, client: str, method: str, path: str) -> tuple[float, bytes]:
        start_at = time.perf_counter()
        if client == "httpx":
            response = clients[arm].request(method, path, json=body if method == "POST" else None)
            elapsed = time.perf_counter() - start_at
            response.raise_for_status()
            return elapsed, response.content
        data = stdlib[arm].request(method, path, raw if method == "POST" else None)
        return time.perf_counter() - start_at, data

    try:
        for arm in arms_order:  # warm-up: the verifier's first encodings, lazy imports
            for client in CLIENTS:
                for _ in range(10):
                    timed(arm, client, "POST", "/v1/answer")
        for _ in range(200):
            for arm in arms_order:
                for client in CLIENTS:
                    times[arm, client, "floor"].append(timed(arm, client, "GET", "/healthz")[0])
        for _ in range(args.n):
            for arm in arms_order:  # alternating: both see the same machine at the same time
                for client in CLIENTS:
                    wall, data = timed(arm, client, "POST", "/v1/answer")
                    times[arm, client, "wall"].append(wall)
                    total = float(json.loads(data)["timings"]["total"])
                    times[arm, client, "overhead"].append(wall - total)
    finally:
        for session in clients.values():
            session.close()
        for plain in stdlib.values():
            plain.close()
        for server, _ in servers.values():
            stop(server)

    def ms(values: list[float]) -> float:
        return round(1000 * statistics.median(values), 2)

    def summary(arm: str, client: str) -> dict[str, float]:
        floor, overhead = ms(times[arm, client, "floor"]), ms(times[arm, client, "overhead"])
        return {
            "http_floor_ms_median": floor,
            "wall_ms_median": ms(times[arm, client, "wall"]),
            "overhead_ms_median": overhead,
            "overhead_minus_floor_ms_median": round(overhead - floor, 2),
        }

    httpx_side = {arm: summary(arm, "httpx") for arm in arms_order}
    arms = {arm: {**httpx_side[arm], "stdlib_client": summary(arm, "stdlib")} for arm in arms_order}
    other = arms_order[0]
    result = {
        "setting": (
            "the real app in its own process (SQLite store, rate limit counted, balanced "
            "policy, the shipped verifier) over the scripted test model; one request at a time, "
            f"{args.n} POST /v1/answer with one passage to each server and from each client "
            "(httpx; the standard library's http.client in stdlib_client), alternating, "
            "after 20 warm-up requests each; overhead = wall minus timings.total"
        ),
        "arms_described": described,
        "cpus": os.cpu_count(),
        "requests_per_server": args.n,
        "arms": arms,
        f"overhead_ratio_standard_to_{other}": round(
            httpx_side["standard"]["overhead_ms_median"] / httpx_side[other]["overhead_ms_median"],
            2,
        ),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
