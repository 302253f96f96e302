#!/usr/bin/env bash
# The project's GPU check, for a CUDA machine that has torch and Triton but no network.
# Runs from the source tree root (nothing installed: PYTHONPATH=$PWD):
#
#     bash benchmarks/gpu_check.sh [all|tests|bench|tune]      (default all)
#
# 1. nvidia-smi, versions and the git revision -> env.txt
# 2. tests: the whole test suite with the Triton kernels compiled for the GPU
#    (TRITON_INTERPRET unset): python -m pytest tests -q [-n 12] -> tests.txt
# 3. bench: the full benchmark matrix, python benchmarks/run.py -> results.{md,json,png},
#    bench.txt; run even when the tests failed.
# 4. tune: the launch-policy sweep, python benchmarks/tune.py -> tune.{md,json}, tune.txt
#    (its recommended LaunchConfig goes into kernels/launch.py by hand, with a rerun of
#    bench to confirm it).
# Everything lands in benchmarks/results/<device-slug>-<date>/ (OUT=... overrides).
# Exit status: 1 when the tests or the benchmark script failed, 0 otherwise.
# Time: the benchmark bounds itself (run.py --budget, default 480 s + the case in
# flight); the tests are capped at TEST_TIMEOUT seconds (default 540, inside one
# 10-minute device command). About 20 minutes
# for `all` on an H100; `tests`, `bench` and `tune` (--budget 420 s) each fit in a
# 10-minute slot.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
# optional baselines carried as wheels (benchmarks/fetch_baselines.sh): Liger, CCE
if ls .whl/*.whl >/dev/null 2>&1; then
  "${PYTHON:-python}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PY="${PYTHON:-python}"
what="${1:-all}"
case "$what" in all|tests|bench|tune) ;; *) echo "usage: $0 [all|tests|bench|tune]"; exit 2 ;; esac

slug=$("$PY" -c "import re, torch; n = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'; print(re.sub(r'[^a-z0-9]+', '-', n.lower()).strip('-'))") \
  || { echo "cannot import torch"; exit 2; }
out="${OUT:-benchmarks/results/${slug}-$(date +%F)}"
mkdir -p "$out"
echo "results folder: $out"
{
  nvidia-smi || echo "nvidia-smi: not available"
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__); print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
  git status --short 2>/dev/null | head -20
} 2>&1 | tee "$out/env.txt"

# step NAME LOG COMMAND...: run COMMAND, tee its output to $out/LOG, record its status
failed=""
step() {
  local name=$1 log=$2; shift 2
  echo "== $name =="
  local start rc
  start=$(date +%s)
  "$@" 2>&1 | tee "$out/$log"
  rc=${PIPESTATUS[0]}
  echo "$name: exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$out/$log"
  [ "$rc" -eq 0 ] || failed="$failed $name($out/$log)"
}

if [ "$what" = all ] || [ "$what" = tests ]; then
  # Most of the time is Triton compiling the suite's kernel variants (one per loss, path,
  # dtype, block and flag combination), which is CPU work: spread it over pytest-xdist
  # workers when the machine has it (the CUDA image does). All failures are listed
  # (up to 25), not just the first.
  par=()
  if "$PY" -c "import xdist" 2>/dev/null; then par=(-n "${TEST_WORKERS:-12}"); fi
  step "test suite (TRITON_INTERPRET unset)" tests.txt timeout "${TEST_TIMEOUT:-540}" \
    "$PY" -m pytest tests -q -p no:cacheprovider --maxfail=25 "${par[@]}"
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  step benchmarks bench.txt "$PY" benchmarks/run.py --out "$out"
fi
if [ "$what" = all ] || [ "$what" = tune ]; then
  step "launch-policy sweep" tune.txt "$PY" benchmarks/tune.py --out "$out"
fi

if [ -n "$failed" ]; then echo "FAILED:$failed"; exit 1; fi
echo "all done: $out"
