#!/usr/bin/env bash
# Proxy mode against an OpenAI-compatible server nobody here wrote: llama-cpp-python's server
# (`python -m llama_cpp.server`) serving the Qwen2.5-0.5B-Instruct GGUF this project assembles,
# on its chat route with and without logprobs, guarded by the embedded model.
#
# llama-cpp-python ships as source only and compiles llama.cpp (with -DGGML_NATIVE=OFF: the
# native build dies with "Illegal instruction" on this kind of machine); that takes longer on
# two cores than the whole test suite (measured here: 193 compile steps, about 25 minutes with
# two jobs), so this runs here and not in the tests. The build goes into its own environment
# (LLAMA_VENV, default .venv-llama), once; pip keeps the built wheel in its cache, and
# LLAMA_CPP_WHEEL=path installs an already built wheel instead.
#
#   bash benchmarks/llama_cpp_upstream.sh            (writes benchmarks/results/llama_cpp_upstream.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-8012}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LLAMA_VENV="${LLAMA_VENV:-.venv-llama}"
if [ ! -x "$LLAMA_VENV/bin/python" ]; then
  python3.11 -m venv "$LLAMA_VENV"
fi
if ! "$LLAMA_VENV/bin/python" -c "import llama_cpp.server" 2> /dev/null; then
  if [ -n "${LLAMA_CPP_WHEEL:-}" ]; then
    "$LLAMA_VENV/bin/pip" install --quiet "${LLAMA_CPP_WHEEL}[server]"
  else
    echo "building llama-cpp-python (once; about 25 minutes on two cores)" >&2
    # Portable AVX2 code only (the native build dies with "Illegal instruction" here), and
    # none of llama.cpp's own tools, tests or examples: the Python server needs the library.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
      "$LLAMA_VENV/bin/pip" install --quiet "llama-cpp-python[server]==0.3.36"
  fi
fi
# The GGUF file of the escalation model, assembled and checked as `guardrail prepare` does.
GGUF=$(.venv/bin/python - << 'PY'
import sys, tempfile
from pathlib import Path
from guardrail.config import GuardrailConfig
from guardrail.models import model_spec
target = GuardrailConfig().cache_dir / "gguf"
target.mkdir(parents=True, exist_ok=True)
path = target / "qwen2.5-coder-0.5b-instruct.gguf"
if not path.exists():
    path = model_spec("qwen2.5-0.5b-instruct").write_gguf(target, lambda m: print(m, file=sys.stderr))
print(path)
PY
)
"$LLAMA_VENV/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias qwen \
  --port "$PORT" --n_ctx 4096 --n_threads 2 --logits_all true \
  > "${TMPDIR:-/tmp}/llama-cpp-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" > /dev/null && break
  kill -0 $SERVER 2> /dev/null || { tail -20 "${TMPDIR:-/tmp}/llama-cpp-server.log" >&2; exit 1; }
  sleep 1
done
.venv/bin/python benchmarks/llama_cpp_upstream.py "http://127.0.0.1:$PORT/v1" qwen \
  benchmarks/results/llama_cpp_upstream.json
