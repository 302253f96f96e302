#!/usr/bin/env bash
# The project's GPU check, for a CUDA machine with torch and Triton but no network.
# Runs from the source tree (nothing is installed): the whole test suite on CUDA
# without the Triton interpreter, then the benchmark matrix. Everything lands in
# benchmarks/results/<device>-<date>/. Steps can be run separately (each fits in the
# 10 minutes a device command may take):
#   bash benchmarks/gpu_check.sh tests | bench | all (default)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
what=${1:-all}
slug=$(python -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
out="benchmarks/results/${slug}-$(date +%F)"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" | tee "$out/versions.txt"
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  python -m pytest tests -q -p no:cacheprovider -x 2>&1 | tee "$out/tests.txt"
  status=${PIPESTATUS[0]}
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python benchmarks/run.py --out "$out" 2>&1 | tee "$out/bench.txt"
fi
exit "$status"
