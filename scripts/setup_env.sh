#!/usr/bin/env bash
# Create (or reuse) .venv with a torch build that suits the machine, Triton, and this
# package with the extras given as arguments (e.g. `test`, `demo`).
# On a machine without a GPU a CPU-only torch is installed (a plain `torch` requirement
# would pull a multi-GB CUDA build); the Triton kernels then run under TRITON_INTERPRET=1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.3"
  else
    # the CPU build lies on this workplace's disk; elsewhere PyTorch's CPU index serves it
    python -m pip install -q "torch==2.13.0" 2>/dev/null \
      || python -m pip install -q "torch>=2.3" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
extras=$(IFS=,; echo "$*")
if [ -n "$extras" ]; then
  python -m pip install -q ".[${extras}]"
else
  python -m pip install -q .
fi
