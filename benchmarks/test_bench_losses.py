"""pytest-benchmark comparison of the implementations of a loss, side by side.

    python -m pytest benchmarks                                  # one table per case (benchmark.group)
    python -m pytest benchmarks --benchmark-group-by=param:case  # the same grouping, by parameter
    python -m pytest benchmarks -q --benchmark-disable           # only check that every case runs

Each test runs one implementation (fused, fused_torch, eager, compiled, torch_ce,
liger) on one case (loss, dtype, N, K, mode); ``benchmark.group`` is the case, so the
implementations of a case sit in one table. Small sizes on CPU, large on CUDA.
Implementations that cannot run here are skipped with the reason and the device. Not
part of the unit tests (``tests/``); the full matrix, with bandwidth and memory
accounting, is ``python benchmarks/run.py``.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import common

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOSSES = ["anl_ce", "anl_fl", "nce_rce", "ce"]
if DEVICE == "cuda":
    CASES = [(loss, "bfloat16", n, k, mode) for loss in LOSSES for n, k in ((4096, 32768), (16384, 131072))
             for mode in ("fwd+bwd", "fwd")]
    ROUNDS, WARMUP = 10, 2
else:  # small sizes: on CPU the point is the comparison, not the absolute numbers
    CASES = [(loss, "float32", n, k, mode) for loss in LOSSES for n, k in ((512, 1000), (1024, 8192))
             for mode in ("fwd+bwd", "fwd")]
    ROUNDS, WARMUP = 3, 1


def _case_id(c):
    return f"{c[0]}-{c[1]}-N{c[2]}-K{c[3]}-{c[4]}"


@pytest.mark.parametrize("impl", common.IMPL_ORDER)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_loss(benchmark, case, impl):
    loss, dtype, n, k, mode = case
    if impl in ("torch_ce", "liger") and loss != "ce":
        pytest.skip(f"{impl} computes cross entropy only")
    impls, skipped = common.implementations(loss, DEVICE)
    if impl not in impls:
        pytest.skip(f"{impl} on {DEVICE}: {skipped.get(impl, 'not available')}")
    fn = common.compiled_fn(loss) if impl == "compiled" else impls[impl]
    try:
        z, t = common.make_inputs(n, k, common.DTYPES[dtype], DEVICE)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"inputs do not fit on {DEVICE}")
    run = common.step(fn, z, t, mode)

    def target():
        run()
        common.sync(DEVICE)

    benchmark.group = f"{_case_id(case)} ({DEVICE})"
    benchmark.extra_info.update(impl=impl, bytes=common.case_bytes(n, k, z.dtype, mode))
    try:
        benchmark.pedantic(target, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of memory on {DEVICE}")
