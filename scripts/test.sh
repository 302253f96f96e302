#!/usr/bin/env bash
# The test command: set up .venv, then run the whole test suite. Without a GPU the
# Triton kernels run on the CPU under TRITON_INTERPRET=1 (tests/conftest.py sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
# shellcheck disable=SC1091
. "${VENV:-.venv}/bin/activate"
# the wheel's layout: fused_anl.kernels must import from the installed package
(cd / && TRITON_INTERPRET=1 python -c "import fused_anl.kernels.launch, fused_anl; print('installed package imports:', fused_anl.__file__)")
# pytest-xdist workers: one per core, at most 4 (tests/conftest.py gives each worker its
# share of the cores' threads; the GPU-compile and GPU-check modules stay on one worker)
WORKERS=${TEST_WORKERS:-$(python -c "import os; n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(); print(max(1, min(4, n or 1)))")}
python -m pytest tests -q -p no:cacheprovider -n "$WORKERS" --dist loadgroup "$@"
