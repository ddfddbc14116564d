#!/usr/bin/env bash
# The main job on the embedded defaults: set up, then a guided tour on the bundled demo corpus
# with the embedded models (first run: about two minutes to convert models and build the index).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/guardrail demo "$@"
