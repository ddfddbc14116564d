#!/usr/bin/env bash
# Create .venv and install guardrail with the CPU FAISS build, the escalation model and the
# development tools. Safe to run again: it only installs what is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[cpu,escalation,eval,dev]"

# System packages the tests use: Debian's redis-server (the Redis decision store's tests start
# their own server on 127.0.0.1), chromium (the dashboard's test loads the page in it,
# headless) and prometheus (for promtool, which checks and unit-tests the alert rules; its
# service is not started). Installed only when missing.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "Installing Debian packages: ${need[*]}" >&2
  if ! $SUDO apt-get install -y -q "${need[@]}" >/dev/null; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q "${need[@]}" >/dev/null
  fi
fi
