#!/usr/bin/env bash
# The project's GPU check, for a CUDA machine that has torch and Triton but no network.
# Runs from the source tree root (nothing installed: PYTHONPATH=$PWD):
#
#     bash benchmarks/gpu_check.sh [all|tests|bench|tune]      (default all)
#
# 1. nvidia-smi, versions and the git revision -> env.txt
# 2. tests: the whole test suite with the Triton kernels compiled for the GPU
#    (TRITON_INTERPRET unset): python -m pytest tests -x -q -> tests.txt
# 3. bench: the full benchmark matrix, python benchmarks/run.py -> results.{md,json,png},
#    bench.txt; run even when the tests failed.
# 4. tune: the launch-policy sweep, python benchmarks/tune.py -> tune.{md,json}, tune.txt
#    (its recommended LaunchConfig goes into kernels/launch.py by hand, with a rerun of
#    bench to confirm it).
# Everything lands in benchmarks/results/<device-slug>-<date>/ (OUT=... overrides).
# Exit status: 1 when the tests or the benchmark script failed, 0 otherwise.
# Time: the benchmark bounds itself (run.py --budget, default 480 s + the case in
# flight); the tests are capped at TEST_TIMEOUT seconds (default 900). About 20 minutes
# for `all` on an H100; `tests`, `bench` and `tune` (--budget 420 s) each fit in a
# 10-minute slot.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
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

tests_rc=0
bench_rc=0
tune_rc=0
if [ "$what" = all ] || [ "$what" = tests ]; then
  echo "== test suite (TRITON_INTERPRET unset) =="
  start=$(date +%s)
  timeout "${TEST_TIMEOUT:-900}" "$PY" -m pytest tests -x -q -p no:cacheprovider 2>&1 | tee "$out/tests.txt"
  tests_rc=${PIPESTATUS[0]}
  echo "tests: exit status $tests_rc after $(( $(date +%s) - start )) s" | tee -a "$out/tests.txt"
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  echo "== benchmarks =="
  start=$(date +%s)
  "$PY" benchmarks/run.py --out "$out" 2>&1 | tee "$out/bench.txt"
  bench_rc=${PIPESTATUS[0]}
  echo "benchmarks: exit status $bench_rc after $(( $(date +%s) - start )) s" | tee -a "$out/bench.txt"
fi

if [ "$what" = all ] || [ "$what" = tune ]; then
  echo "== launch-policy sweep =="
  start=$(date +%s)
  "$PY" benchmarks/tune.py --out "$out" 2>&1 | tee "$out/tune.txt"
  tune_rc=${PIPESTATUS[0]}
  echo "tune: exit status $tune_rc after $(( $(date +%s) - start )) s" | tee -a "$out/tune.txt"
fi

if [ "$tune_rc" -ne 0 ]; then echo "TUNING SWEEP FAILED (exit status $tune_rc): $out/tune.txt"; fi
if [ "$tests_rc" -ne 0 ]; then echo "TESTS FAILED (exit status $tests_rc): $out/tests.txt"; fi
if [ "$bench_rc" -ne 0 ]; then echo "BENCHMARK SCRIPT FAILED (exit status $bench_rc): $out/bench.txt"; fi
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$tune_rc" -eq 0 ] || exit 1
echo "all done: $out"
