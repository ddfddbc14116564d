"""A service process for a benchmark: a free port, start it and wait for ``/readyz``, stop it.

Imported by the benchmark scripts (``python benchmarks/NAME.py`` puts this folder first on
the import path).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""The environment every benchmark's server runs in: no model hub, quiet tokenizers."""


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def guardrail_command(*args: str) -> list[str]:
    """``guardrail ARGS`` from this interpreter's environment."""
    return [str(Path(sys.executable).with_name("guardrail")), *args]


def start(
    command: Sequence[str],
    *,
    base: str,
    env: Mapping[str, str],
    log: Path | None = None,
    timeout: float = 900,
) -> subprocess.Popen[bytes]:
    """Run ``command`` with ``env`` added to this environment and :data:`OFFLINE` (its output
    to ``log`` when given), and return once ``base``/readyz answers 200."""
    out = log.open("w") if log is not None else None
    server = subprocess.Popen(
        list(command),
        env={**os.environ, **OFFLINE, **env},
        stdout=out,
        stderr=subprocess.STDOUT if out is not None else None,
    )
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped{f'; see {log}' if log else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server was not ready within {timeout:g} s")
        time.sleep(0.5)


def stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a minute."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
