#!/usr/bin/env bash
# SQuAD 2.0 dev, gold paragraph, 1,000 calibration and 1,000 test questions (disjoint by
# paragraph, half unanswerable, seed 0), no sampling baseline: a sample large enough to tell
# the calibrated confidence's gain over the best single signal from noise. About 20 minutes
# on two cores when nothing is cached.
#
#   bash benchmarks/squad2_gold_large.sh [DATA_DIR]      (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
G=.venv/bin/guardrail
COMMON=(--dataset squad2 --setting gold --data-dir "$DATA" --n 1000 --seed 0
        --max-passage-words 300 --top-k 2)
$G calibrate "${COMMON[@]}" --target-error 0.1 --delta 0.1 \
  --out policies/calibrated/squad2-gold-n1000 || [ $? -eq 3 ]
$G eval "${COMMON[@]}" --split test --fit-split calibrate \
  --policy policies/calibrated/squad2-gold-n1000.yaml --out benchmarks/reports/squad2-gold-n1000
