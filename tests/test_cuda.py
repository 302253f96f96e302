"""Checks that need a real GPU (run by benchmarks/gpu_check.sh on a CUDA machine)."""
import pytest
import torch

import fused_anl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_no_host_sync_in_forward_and_backward():
    z = torch.randn(64, 1000, device="cuda", requires_grad=True)
    t = torch.randint(0, 1000, (64,), device="cuda")
    fused_anl.anl_ce(z, t).backward()  # warm-up: compile, cache the hyperparameter tensor
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name in ("anl_ce", "anl_fl", "nce_rce", "ce"):
            for reduction in ("mean", "none"):
                out = getattr(fused_anl, name)(z, t, reduction=reduction)
                out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_graph_capture_matches_eager():
    z = torch.randn(32, 5000, device="cuda", requires_grad=True)
    t = torch.randint(0, 5000, (32,), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            z.grad = None
            fused_anl.anl_ce(z, t).backward()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    z.grad = None
    with torch.cuda.graph(g):
        loss = fused_anl.anl_ce(z, t)
        loss.backward()
    z.data.normal_()
    g.replay()
    torch.cuda.synchronize()
    zr = z.detach().clone().requires_grad_(True)
    ref = fused_anl.reference.anl_ce(zr, t)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, zr.grad, rtol=1e-4, atol=1e-7)


def test_out_of_range_and_absent_labels_give_nan_on_cuda():
    z = torch.randn(4, 10, device="cuda")
    t = torch.tensor([0, 10, -3, 2], device="cuda")
    z[3, 2] = float("-inf")
    for backend in ("triton", "torch"):
        out = fused_anl.anl_ce(z, t, reduction="none", backend=backend)
        assert torch.isfinite(out[0]) and torch.isnan(out[1:]).all()


@pytest.mark.parametrize("backend", ["triton"])
def test_offsets_beyond_int32(backend):
    free, _ = torch.cuda.mem_get_info()
    n, k = 16400, 131072  # N*K > 2^31 elements
    if free < 3 * n * k * 2:
        pytest.skip("not enough GPU memory for a 2^31-element bf16 test")
    z = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, k, (n,), device="cuda")
    out = fused_anl.anl_ce(z, t, reduction="none", backend=backend)
    out.sum().backward()
    rows = torch.tensor([0, n // 2, n - 1], device="cuda")
    zr = z.detach()[rows].clone().requires_grad_(True)
    ref = fused_anl.reference.anl_ce(zr, t[rows], reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(out[rows], ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z.grad[rows].float(), zr.grad.float(), rtol=2e-2, atol=1e-6)


def test_autocast_bf16_logits():
    lin = torch.nn.Linear(64, 1000).cuda()
    x = torch.randn(32, 64, device="cuda")
    t = torch.randint(0, 1000, (32,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = lin(x)
        loss = fused_anl.anl_ce(logits, t)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()
