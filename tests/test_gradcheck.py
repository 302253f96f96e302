"""torch.autograd.gradcheck (float64) on every path whose gradient is the true derivative.

Inputs are kept away from the clamps' kinks (scale-1 logits over 5 classes: every
p_k is far above p_min and RCE/GCE's 1e-7 floor), where the derivative exists.
The focal losses run in exact mode (detach_focal_weight=False); their default
(detached weight, as published) is not a derivative, by design.

The torch backend and the single-block kernel check the full Jacobian of every loss.
The multi-block paths (streaming, split rows) run every loss too, in gradcheck's fast
mode: it compares ``v^T J u`` for random ``u, v`` with finite differences along ``u``,
which a wrong Jacobian entry changes with probability 1, at two forward evaluations
instead of one per input entry (the interpreter makes each evaluation cost seconds).
One full-Jacobian check on the streaming path remains.
"""
import pytest
import torch

import fused_anl
from fused_anl.kernels import launch

from conftest import DEVICE

ALL = sorted(fused_anl.LOSSES)
# Tiny blocks so that K = 5 streams over 3 blocks and splits into 3 chunks.
SMALL_PATHS = {
    "single": dict(),
    "stream": dict(max_single_k=2, block_k=2),
    "split": dict(max_single_k=2, block_k=2, split_chunk=2, split_max_rows=1 << 30),
    "persistent": dict(max_single_k=2, block_k=2, programs_per_sm=2, sms=1),  # 2 programs, 3 rows
}


def _check(name, backend, reduction="mean", fast_mode=False):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    t = torch.tensor([0, 3, -100], device=DEVICE)
    kw = {"detach_focal_weight": False} if fused_anl.LOSSES[name].focal else {}
    fn = getattr(fused_anl, name)
    with fused_anl.repeatable_backward():  # gradcheck runs backward once per output
        assert torch.autograd.gradcheck(
            lambda x: fn(x, t, backend=backend, reduction=reduction, **kw),
            (z,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_torch_backend(name):
    _check(name, "torch")


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_triton_single_block(name):
    _check(name, "triton")


@pytest.mark.parametrize("path", ["stream", "split"])
@pytest.mark.parametrize("name", ALL)
def test_gradcheck_triton_multi_block_paths(name, path):
    with launch.config(**SMALL_PATHS[path]):
        _check(name, "triton", fast_mode=True)


def test_gradcheck_triton_streaming_full_jacobian():
    with launch.config(**SMALL_PATHS["stream"]):
        _check("anl_fl", "triton")


def test_gradcheck_triton_persistent_grid():
    with launch.config(**SMALL_PATHS["persistent"]):
        _check("anl_ce", "triton")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gradcheck_per_sample_reduction(backend):
    _check("anl_ce", backend, reduction="none")
