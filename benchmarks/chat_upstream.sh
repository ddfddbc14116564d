#!/usr/bin/env bash
# Proxy mode against a chat upstream, guarded by the embedded model: Qwen2.5-0.5B-Instruct
# served over HTTP (`guardrail serve --mode model`), Gemma-3-270M as the guard model, SQuAD 2.0
# dev with the gold paragraph, calibrators fitted on the calibration split and reported on the
# test split (seed 0), in three upstream settings:
#
#   chat-logprobs     /v1/chat/completions with logprobs (token signals: the upstream's)
#   chat-plain        /v1/chat/completions without logprobs (token signals: the guard's)
#   completions-echo  /v1/completions with the few-shot prompt, no guard model: the upstream
#                     scores its own answer through echo (the proxy mode this project had)
#
# Reports go to benchmarks/reports/upstream-<setting>-n<N>; each report's cost section gives
# the guard's time next to the upstream's own generation, measured side by side. Both models
# run in float32 (this machine has no native bfloat16). About 10 s a question on two cores.
#
#   bash benchmarks/chat_upstream.sh [N per split, default 300] [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-300}"
DATA="${2:-../shared/data}"
PORT="${PORT:-8011}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GUARDRAIL_DTYPE=float32
G=.venv/bin/guardrail
R=benchmarks/reports
RECORDS="${RECORDS:-${TMPDIR:-/tmp}/guardrail-chat-upstream}"

GUARDRAIL_GENERATOR=qwen2.5-0.5b-instruct $G serve --mode model --port "$PORT" \
  > "${TMPDIR:-/tmp}/guardrail-upstream-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break
  kill -0 $SERVER 2> /dev/null || { echo "the upstream did not start" >&2; exit 1; }
  sleep 1
done

export GUARDRAIL_UPSTREAM_URL="http://127.0.0.1:$PORT/v1"
export GUARDRAIL_UPSTREAM_MODEL=qwen2.5-0.5b-instruct
run() {  # setting-name, then environment assignments
  local name=$1
  shift
  env "$@" $G eval --dataset squad2 --setting gold --data-dir "$DATA" --seed 0 --n "$N" \
    --split test --fit-split calibrate --no-escalation --records "$RECORDS/$name" \
    --no-progress --out "$R/upstream-$name-n$N"
}
run chat-logprobs GUARDRAIL_UPSTREAM_API=chat GUARDRAIL_UPSTREAM_LOGPROBS=true
run chat-plain GUARDRAIL_UPSTREAM_API=chat GUARDRAIL_UPSTREAM_LOGPROBS=false
run completions-echo GUARDRAIL_UPSTREAM_API=completions GUARDRAIL_GUARD=none
