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
# Each answer is cached in $RECORDS/<setting> as it is made, so a run that was stopped goes on
# where it stopped when started again with the same N.
#
# PARALLEL=1 runs the three settings at once, each against its own upstream server (ports
# PORT, PORT+1, PORT+2), every process on one thread unless GUARDRAIL_THREADS says otherwise:
# on two cores this keeps both busy (one setting at a time leaves one mostly idle while the
# upstream and the guard take turns). Each question's guard and upstream times are still
# measured side by side, on a busier machine.
#
#   [PARALLEL=1] bash benchmarks/chat_upstream.sh [N per split, default 300] [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-300}"
DATA="${2:-../shared/data}"
PORT="${PORT:-8011}"
PARALLEL="${PARALLEL:-0}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export GUARDRAIL_DTYPE=float32
if [ "$PARALLEL" = 1 ]; then
  export GUARDRAIL_THREADS="${GUARDRAIL_THREADS:-1}" OMP_NUM_THREADS="${GUARDRAIL_THREADS:-1}"
fi
G=.venv/bin/guardrail
R=benchmarks/reports
RECORDS="${RECORDS:-${TMPDIR:-/tmp}/guardrail-chat-upstream}"
SERVERS=()
trap 'kill "${SERVERS[@]}" 2>/dev/null || true' EXIT

upstream() {  # port: start the upstream server there and wait until it answers
  local port=$1 pid
  GUARDRAIL_GENERATOR=qwen2.5-0.5b-instruct $G serve --mode model --port "$port" \
    > "${TMPDIR:-/tmp}/guardrail-upstream-server-$port.log" 2>&1 &
  pid=$!
  SERVERS+=("$pid")
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && return 0
    kill -0 "$pid" 2> /dev/null || break
    sleep 1
  done
  echo "the upstream server on port $port did not start (see its log in ${TMPDIR:-/tmp})" >&2
  exit 1
}

run() {  # setting-name, port, then environment assignments
  local name=$1 port=$2
  shift 2
  env GUARDRAIL_UPSTREAM_URL="http://127.0.0.1:$port/v1" \
    GUARDRAIL_UPSTREAM_MODEL=qwen2.5-0.5b-instruct "$@" \
    $G eval --dataset squad2 --setting gold --data-dir "$DATA" --seed 0 --n "$N" \
    --split test --fit-split calibrate --no-escalation --records "$RECORDS/$name" \
    --no-progress --out "$R/upstream-$name-n$N"
}

SETTINGS=(
  "chat-logprobs GUARDRAIL_UPSTREAM_API=chat GUARDRAIL_UPSTREAM_LOGPROBS=true"
  "chat-plain GUARDRAIL_UPSTREAM_API=chat GUARDRAIL_UPSTREAM_LOGPROBS=false"
  "completions-echo GUARDRAIL_UPSTREAM_API=completions GUARDRAIL_GUARD=none"
)

if [ "$PARALLEL" = 1 ]; then
  JOBS=()
  for i in "${!SETTINGS[@]}"; do
    upstream $((PORT + i))
  done
  for i in "${!SETTINGS[@]}"; do
    read -r -a setting <<< "${SETTINGS[$i]}"
    run "${setting[0]}" $((PORT + i)) "${setting[@]:1}" &
    JOBS+=($!)
  done
  failed=0
  for job in "${JOBS[@]}"; do
    wait "$job" || failed=1
  done
  exit $failed
fi

upstream "$PORT"
for entry in "${SETTINGS[@]}"; do
  read -r -a setting <<< "$entry"
  run "${setting[0]}" "$PORT" "${setting[@]:1}"
done
