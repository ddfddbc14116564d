#!/usr/bin/env bash
# Set up, then lint, type-check and run the whole test suite (real models included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check guardrail retrievers policies service tests benchmarks examples
.venv/bin/ruff format --check guardrail retrievers policies service tests benchmarks examples
.venv/bin/mypy
.venv/bin/pytest -q "$@"
