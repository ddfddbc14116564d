#!/usr/bin/env bash
# The selective-answering benchmark of docs/evaluation.md: calibrate on 300 SQuAD 2.0 dev
# questions, report on a disjoint 300 (half unanswerable in each, seed 0), in the gold-paragraph
# and the open-retrieval settings; then SelfAware (open retrieval) in-domain and with the
# SQuAD-calibrated policy (transfer); then SQuAD 1.1 dev (all answerable, gold paragraph); then ConflictQA
# with counter-memory evidence. Model runs are cached under ~/.cache/guardrail/eval, so
# a second run only recomputes the reports. Takes about 1.9 hours on two cores when nothing
# is cached (the 5-sample baseline is most of it).
#
#   bash benchmarks/selective_answering.sh [DATA_DIR]      (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
G=.venv/bin/guardrail
COMMON=(--data-dir "$DATA" --n 300 --seed 0 --max-passage-words 300 --top-k 2)
REPORTS=benchmarks/reports
POLICIES=policies/calibrated

for setting in gold open; do
  # calibrate exits 3 when no threshold meets the target; the report says so too.
  $G calibrate --dataset squad2 --setting "$setting" "${COMMON[@]}" \
    --target-error 0.1 --delta 0.1 --out "$POLICIES/squad2-$setting" || [ $? -eq 3 ]
  $G eval --dataset squad2 --setting "$setting" "${COMMON[@]}" --split test \
    --fit-split calibrate --samples 5 --policy "$POLICIES/squad2-$setting.yaml" \
    --out "$REPORTS/squad2-$setting"
done

$G calibrate --dataset selfaware --setting open "${COMMON[@]}" \
  --target-error 0.1 --delta 0.1 --out "$POLICIES/selfaware-open" || [ $? -eq 3 ]
$G eval --dataset selfaware --setting open "${COMMON[@]}" --split test --fit-split calibrate \
  --policy "$POLICIES/selfaware-open.yaml" --out "$REPORTS/selfaware-open"
# Transfer: the policy calibrated on SQuAD 2.0 (open retrieval) applied to SelfAware.
$G eval --dataset selfaware --setting open "${COMMON[@]}" --split test \
  --policy "$POLICIES/squad2-open.yaml" --out "$REPORTS/selfaware-open-transfer"

$G calibrate --dataset squad11 --setting gold "${COMMON[@]}" \
  --target-error 0.1 --delta 0.1 --out "$POLICIES/squad11-gold" || [ $? -eq 3 ]
$G eval --dataset squad11 --setting gold "${COMMON[@]}" --split test --fit-split calibrate \
  --policy "$POLICIES/squad11-gold.yaml" --out "$REPORTS/squad11-gold"

# Knowledge conflicts: ConflictQA (StrategyQA yes/no questions) with the evidence that
# contradicts the model's own memory, where the Confidence Gain signals should matter most.
$G calibrate --dataset conflictqa --setting counter "${COMMON[@]}" \
  --target-error 0.1 --delta 0.1 --out "$POLICIES/conflictqa-counter" || [ $? -eq 3 ]
$G eval --dataset conflictqa --setting counter "${COMMON[@]}" --split test --fit-split calibrate \
  --policy "$POLICIES/conflictqa-counter.yaml" --out "$REPORTS/conflictqa-counter"
