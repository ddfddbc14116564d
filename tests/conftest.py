"""Shared test set-up: offline models, and a cache directory that survives between runs."""

from __future__ import annotations

import os

# No test may reach a model hub: every model comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
