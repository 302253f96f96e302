#!/usr/bin/env bash
# Create (or reuse) .venv with a torch build that suits the machine, Triton, and this
# package with the extras given as arguments (e.g. `test`, `demo`).
# On a machine without a GPU only a CPU-only torch is installed: the pinned CPU wheel
# (torch==2.13.0+cpu, from the local wheel folder or PyTorch's CPU index). A plain
# `torch` requirement would pull a multi-GB CUDA build, so if the CPU wheel cannot be
# installed this script stops with a message instead. The Triton kernels then run
# under TRITON_INTERPRET=1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_CPU=${TORCH_CPU:-torch==2.13.0+cpu}
CPU_INDEX=https://download.pytorch.org/whl/cpu
# quiet pip: errors only (no location or version-check warnings in the job's output)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1
pip_install() { python -m pip install -qq --no-warn-script-location "$@"; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip_install "torch>=2.3"   # a GPU: the default (CUDA) build is the right one
  elif ! pip_install "$TORCH_CPU" 2>/dev/null \
       && ! pip_install "$TORCH_CPU" --extra-index-url "$CPU_INDEX"; then
    echo "setup_env.sh: could not install the CPU build of torch ($TORCH_CPU) from the" \
         "configured package sources or $CPU_INDEX. This machine has no GPU, so a plain" \
         "'pip install torch' (a multi-GB CUDA build) is not attempted. Install a CPU build" \
         "of torch >= 2.3 into $VENV yourself (or set TORCH_CPU=torch==<version>+cpu) and" \
         "rerun." >&2
    exit 1
  fi
fi
extras=$(IFS=,; echo "$*")
if [ -n "$extras" ]; then
  pip_install ".[${extras}]"
else
  pip_install .
fi
# The test extra also unpacks the Triton of the GPU machines' image beside the venv's own
# (no dependencies; nothing imports it but tests/test_gpu_compile.py, which compiles the
# kernels with both: GPU_IMAGE_TRITON there).
GPU_IMAGE_TRITON=${GPU_IMAGE_TRITON:-3.6.0}
case ",$extras," in
  *,test,*)
    side="$VENV/triton-gpu-image"
    if [ "$(cat "$side/.version" 2>/dev/null)" != "$GPU_IMAGE_TRITON" ]; then
      rm -rf "$side"
      if pip_install --no-deps --target "$side" "triton==$GPU_IMAGE_TRITON"; then
        echo "$GPU_IMAGE_TRITON" > "$side/.version"
      else
        echo "setup_env.sh: could not install triton==$GPU_IMAGE_TRITON into $side;" \
             "tests/test_gpu_compile.py will fail until it is there" >&2
      fi
    fi
    ;;
esac
