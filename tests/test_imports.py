"""A light import: the packages, ``guardrail --help`` and ``guardrail policy check`` load no
PyTorch, transformers, sentence-transformers or FAISS (models load on first use)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "sentence_transformers", "faiss", "langchain_core")

PROBE = """
import contextlib, io, json, sys
{body}
print(json.dumps([m for m in {heavy!r} if m in sys.modules]))
"""


def heavy_after(body: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``body``."""
    code = PROBE.format(body=body, heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "body",
    [
        "import guardrail, policies, retrievers",
        "import guardrail.cli, guardrail.pipeline, guardrail.judge, guardrail.backends",
        "from service import create_app",
        # guardrail --help and guardrail policy check, run in-process (their output discarded)
        "from guardrail.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass",
        "from guardrail.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['policy', 'check', 'support-bot', '--tenant', 'acme-bank']) == 0",
    ],
)
def test_no_heavy_import(body: str) -> None:
    assert heavy_after(body) == []


def test_the_lazy_names_still_resolve() -> None:
    # The heavy parts are one attribute access away, and then loaded.
    assert heavy_after("from retrievers import IndexRetriever") == ["langchain_core"]
    loaded = heavy_after("from guardrail.backends import TransformersBackend")
    assert "torch" in loaded and "transformers" in loaded
