"""Shared test set-up: offline models, and a cache directory that survives between runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a model hub: every model comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``GUARDRAIL_*`` setting from the caller's shell; an empty cache directory."""
    for key in list(os.environ):
        if key.startswith("GUARDRAIL_"):
            monkeypatch.delenv(key)
    cache = tmp_path / "cache"
    monkeypatch.setenv("GUARDRAIL_CACHE_DIR", str(cache))
    return cache
