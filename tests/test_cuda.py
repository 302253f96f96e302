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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_another_device_than_the_current_one():
    """Launches run under the tensors' device (kernels/launch.py _device_guard)."""
    torch.cuda.set_device(0)
    z = torch.randn(16, 3000, device="cuda:1", dtype=torch.float64)
    t = torch.randint(0, 3000, (16,), device="cuda:1")
    for reduction in ("mean", "none"):
        x = z.clone().requires_grad_(True)
        out = fused_anl.anl_ce(x, t, reduction=reduction, backend="triton")
        out.sum().backward()
        xr = z.clone().requires_grad_(True)
        ref = fused_anl.reference.anl_ce(xr, t, reduction=reduction)
        ref.sum().backward()
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(x.grad, xr.grad)


def test_sliced_int64_labels_and_unit_grad_output_on_cuda():
    """target[1:] starts 8 bytes past a 16-byte boundary; backward with grad_output 1
    (no pass over the gradient) and 2.5 (one pass) against the reference."""
    z = torch.randn(33, 5000, device="cuda")
    tt = torch.randint(0, 5000, (34,), device="cuda")
    t = tt[1:]
    assert t.data_ptr() % 16 == 8
    for go in (1.0, 2.5):
        x = z.clone().requires_grad_(True)
        fused_anl.anl_ce(x, t, reduction="sum").backward(torch.tensor(go, device="cuda"))
        xr = z.clone().requires_grad_(True)
        fused_anl.reference.anl_ce(xr, t, reduction="sum").backward(torch.tensor(go, device="cuda"))
        torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)


def test_nan_and_inf_rows_on_cuda():
    """A NaN or +inf logit makes its row NaN on the GPU too (tl.max may drop a NaN there)."""
    for k in (1000, 50000):
        z = torch.randn(4, k, device="cuda", dtype=torch.bfloat16)
        z[1, 7] = float("nan")
        z[2, 9] = float("inf")
        t = torch.randint(0, k, (4,), device="cuda")
        x = z.clone().requires_grad_(True)
        out = fused_anl.anl_ce(x, t, reduction="none")
        out.sum().backward()
        assert torch.isnan(out[1:3]).all() and torch.isfinite(out[[0, 3]]).all()
        assert torch.isnan(x.grad[1:3]).all() and torch.isfinite(x.grad[[0, 3]]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_weight_gradient_accumulates_in_float32_on_cuda(dtype):
    """On CUDA the fused linear loss's weight gradient of bf16/fp16 inputs is one
    ``addmm(..., out_dtype=float32)`` per chunk (fused_anl/linear.py's probe passed), not a
    product in the inputs' dtype; and with it the gradient matches the float64 oracle
    within bf16 rounding of the logit gradient alone."""
    from fused_anl import linear
    dev = torch.device("cuda")
    assert linear._probe_float32_addmm(dev, dtype) is not None, torch.__version__
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 96, generator=g).to(dtype).to(dev)
    w = (torch.randn(1000, 96, generator=g) / 96 ** 0.5).to(dtype).to(dev)
    t = torch.randint(0, 1000, (64,), generator=g).to(dev)
    wp = w.detach().clone().requires_grad_(True)
    gw = torch.autograd.grad(fused_anl.linear_anl_ce(h, wp, t, chunk_size=16), wp)[0]
    wr = w.detach().double().requires_grad_(True)
    (rw,) = torch.autograd.grad(fused_anl.reference.anl_ce(h.double() @ wr.t(), t), wr)
    torch.testing.assert_close(gw.double(), rw, rtol=3e-2, atol=3e-3)
