#!/usr/bin/env bash
# Download the optional GPU baselines (Liger-Kernel, Cut Cross-Entropy) as wheels into
# .whl/ (git-ignored), on a machine with network, for a GPU machine without one.
# They are pure Python (Triton kernels) and need only torch and triton, which the GPU
# image has. gpu_check.sh installs whatever is in .whl/ into /tmp/gpu_check_site first; carry
# the folder to the device run (device tool: carry [".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: -d .whl \
  "liger-kernel==${LIGER_VERSION:-0.8.5}" "cut-cross-entropy==${CCE_VERSION:-25.1.1}"
ls -la .whl
