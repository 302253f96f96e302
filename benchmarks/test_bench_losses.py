"""pytest-benchmark suite (not part of the unit tests):

    python -m pytest benchmarks --benchmark-group-by=param:case

Each case (loss, dtype, N, K, mode) is one group, so the implementations (fused,
eager reference, torch.compile, F.cross_entropy, Liger) sit side by side.
"""
import pytest
import torch

from benchmarks.common import implementations, make_inputs, step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":
    CASES = [(loss, dt, 16384, k, mode) for loss in ("anl_ce", "anl_fl", "nce_rce", "ce")
             for dt in (torch.bfloat16, torch.float32) for k in (32768, 131072) for mode in ("fwd+bwd", "fwd")]
else:  # small sizes: the point on CPU is the comparison, not the absolute numbers
    CASES = [(loss, torch.float32, 512, k, "fwd+bwd") for loss in ("anl_ce", "ce") for k in (1000, 8192)]
IMPLS = ["fused", "fused_torch", "eager", "compiled", "torch_ce", "liger"]


def _id(c):
    return f"{c[0]}-{str(c[1]).replace('torch.', '')}-N{c[2]}-K{c[3]}-{c[4]}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_loss(benchmark, case, impl):
    loss, dtype, n, k, mode = case
    impls = implementations(loss, DEVICE)
    if impl not in impls:
        pytest.skip(f"{impl} is not available for {loss} on this device ({DEVICE})")
    z, t = make_inputs(n, k, dtype, DEVICE)
    run = step(impls[impl], z, t, mode)

    def timed():
        run()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(bytes=z.numel() * z.element_size() * (2 if mode == "fwd+bwd" else 1))
    benchmark(timed)
