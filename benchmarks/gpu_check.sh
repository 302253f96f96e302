#!/usr/bin/env bash
# The project's GPU check, for a CUDA machine with torch and Triton but no network.
# Runs from the source tree (nothing installed: PYTHONPATH=$PWD):
#
#     bash benchmarks/gpu_check.sh               # the five-minute check (<= 300 s wall)
#     bash benchmarks/gpu_check.sh --rehearse    # the same stages on a CPU (~60 s)
#     bash benchmarks/gpu_check.sh tests|smoke|bench|tune    # one long stage (<= 10 min)
#
# Stages (benchmarks/gpu_stages.py, one process each, killed at their slice; the
# slices, benchmarks/gpu_check.py SLICES, add up to 290 s + 10 s for the report):
#   env          15 s  device, driver, torch, Triton, revision, measured copy bandwidth
#   correctness 125 s  tests/test_cuda.py + the smoke matrix (benchmarks/gpu_smoke.py) on
#                      a process pool, + a warm-up of the benchmark's compiles
#   bench       110 s  ANL-CE / CE fwd+bwd bf16 N=16384 K in {32768, 128256}: fused,
#                      eager, torch.compile, Liger; ANL-FL, NCE+RCE; fused linear
#                      K=128256 D=4096 vs unfused, Liger FLCE, CCE; issue 19's targets
#   tune         40 s  launch-policy sweep on the headline cases, recommendation
# A stage that reaches its slice stops (or is stopped) and the summary says what it did
# not run; the next stage still runs.
#
# Results: $GPU_CHECK_OUT, else $OUT (the device tool), else
# benchmarks/results/<device-slug>-<date>/ (rehearsal: /tmp/gpu_check_rehearsal-<date>/):
# summary.md, results.json, tests.txt, env.txt, logs.tar.gz. The summary is printed last.
# Revision: `git describe` when .git is there; else write it first, e.g.
# `git rev-parse HEAD > REVISION` (or GIT_REVISION=...); a source digest is always kept.
# Exit status: 1 when a stage crashed (GPU_CHECK_STRICT=1: or anything failed), else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
rehearse=0
for arg in "$@"; do [ "$arg" = "--rehearse" ] && rehearse=1; done
# Optional baselines carried as wheels (benchmarks/fetch_baselines.sh): Liger, CCE.
if [ "$rehearse" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_check_site .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
  else
    echo "gpu_check: installing the carried wheels failed; running without the baselines"
  fi
fi
exec "$PY" -m benchmarks.gpu_check "$@"
