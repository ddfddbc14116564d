#!/usr/bin/env bash
# The default policy (balanced, with the verifier rule) against the same policy before the
# rule (balanced-before.yaml, kept beside its reports), on the same cached model runs: SQuAD 2.0
# dev gold paragraph (test half, 150, seed 0) and HotpotQA with the gold paragraphs removed
# (test half, 50, three distractors). Escalations count as defers (--no-escalation). Then the
# calibration mix the rule's threshold was chosen on (benchmarks/default_policy_mix.py).
# Default settings: top-3, 160 words per passage, Gemma-3-270M in bfloat16. About 40 minutes
# on two cores when nothing is cached (this machine has no native bfloat16: prompts of three
# passages take 5-10 s each).
#
#   bash benchmarks/default_policy.sh [DATA_DIR]      (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
G=.venv/bin/guardrail
R=benchmarks/reports
C=(--data-dir "$DATA" --seed 0 --top-k 3 --max-passage-words 160 --no-escalation)
for policy in balanced "$R/default-squad2-gold-test150-before/balanced-before.yaml"; do
  suffix=$([ "$policy" = balanced ] && echo "" || echo "-before")
  $G eval --dataset squad2 --setting gold --split test --n 150 "${C[@]}" --policy "$policy" \
    --out "$R/default-squad2-gold-test150$suffix"
  $G eval --dataset hotpotqa --setting no-gold --split test --n 50 "${C[@]}" --policy "$policy" \
    --out "$R/default-hotpotqa-nogold-test50$suffix"
done
MIX="${TMPDIR:-/tmp}/guardrail-default-mix.jsonl"
.venv/bin/python benchmarks/default_policy_mix.py "$MIX" --data "$DATA"
$G eval --dataset "$MIX" --split calibrate --n 300 "${C[@]}" --no-policy \
  --out "$R/default-mix-calibrate300"
