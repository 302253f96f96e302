"""ANL-CE-ER (the published ANL_CE_ER): the rows (alpha NCE + beta NNCE', p clamped to
[p_min, 1 - p_min]) through the fused row loss on every backend and kernel path, plus
lamb * E (fused_anl/batch_entropy.py, tested on its own in test_batch_entropy.py),
against the float64 reference written from the definition (fused_anl/reference.py)."""
import pytest
import torch

import fused_anl
from fused_anl import reference
from fused_anl.kernels import launch

from conftest import DEVICE, PATHS

H = dict(alpha=5.0, beta=5.0, lamb=2.0)  # the published cifar10_anl_ce_er.json


def _batch(k=37, n=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, k, (n,), generator=g)
    z[0, t[0]] += 40.0          # confident: p_y above 1 - p_min (the upper clamp)
    z[1] *= 12.0                # many p below p_min
    t[2] = -100                 # ignored
    z[3, : k // 3] = float("-inf")  # padding
    t[3] = k - 1
    return z.to(dtype).to(DEVICE), t.to(DEVICE)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_reference_every_path(backend, reduction):
    z, t = _batch()
    w = torch.rand(z.shape[1], dtype=torch.float64, device=DEVICE) + 0.5
    ref_in = z.clone().requires_grad_(True)
    ref = reference.anl_ce_er(ref_in, t, reduction=reduction, weight=w, **H)
    go = torch.rand(ref.shape, dtype=torch.float64, device=DEVICE) + 0.5
    ref.backward(go)
    paths = PATHS if backend == "triton" else {"single": {}}
    for path, cfg in paths.items():
        with launch.config(**cfg):
            x = z.clone().requires_grad_(True)
            out = fused_anl.anl_ce_er(x, t, reduction=reduction, weight=w, backend=backend, **H)
            out.backward(go)
        torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12, msg=path)
        torch.testing.assert_close(x.grad, ref_in.grad, rtol=1e-10, atol=1e-12, msg=path)


def test_upper_clamp_leaves_nnce_unchanged():
    """p_k > 1 - p_min leaves every other class below p_min (clamped, v = 0), so V = v_k
    and NNCE' is 0 (k = y) or 1 with a zero gradient either way, as NNCE: the rows of
    ANL-CE-ER are ANL-CE's, values and gradients, the upper clamp included."""
    z, t = _batch()
    z[4, t[4]] += 60.0  # a second confident row, and a confidently wrong one
    z[5, (t[5] + 1) % z.shape[1]] += 60.0
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    rows = fused_anl.anl_ce_er(a, t, reduction="none", alpha=0.0, lamb=0.0, backend="triton")
    plain = fused_anl.anl_ce(b, t, reduction="none", alpha=0.0, backend="triton")
    go = torch.rand(rows.shape, dtype=rows.dtype, device=DEVICE)
    rows.backward(go)
    plain.backward(go)
    assert rows[5] == 1.0 and rows[4].abs() < 1e-12
    torch.testing.assert_close(rows, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """Low-precision logits are computed in float32 (as the float64 reference of the same
    rounded logits): the float32 rounding of ~20 operations on values of order 10."""
    z, t = _batch(dtype=dtype)
    x = z.clone().requires_grad_(True)
    out = fused_anl.anl_ce_er(x, t, backend="triton", **H)
    out.backward()
    r_in = z.to(torch.float64).requires_grad_(True)
    ref = reference.anl_ce_er(r_in, t, **H)
    ref.backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    tol = 8e-3 if dtype != torch.float32 else 1e-5  # the gradient is stored in `dtype`
    torch.testing.assert_close(x.grad.double(), r_in.grad, rtol=tol, atol=tol)


def test_gradcheck_where_clamps_are_inactive():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    t = torch.tensor([0, 3, -100, 1], device=DEVICE)
    with fused_anl.repeatable_backward():
        assert torch.autograd.gradcheck(
            lambda x: fused_anl.anl_ce_er(x, t, backend="triton", **H), (z,), eps=1e-6,
            atol=1e-7, rtol=1e-5)


def test_module_preset_config_and_errors():
    crit = fused_anl.get_loss("anl_ce_er", **fused_anl.PRESETS["cifar10"]["anl_ce_er"])
    assert isinstance(crit, fused_anl.ANLCEERLoss) and isinstance(crit, fused_anl.ANLLoss)
    assert crit.delta == 5e-5 and crit.hyper["lamb"] == 2.0
    z, t = _batch()
    torch.testing.assert_close(crit(z, t), reference.anl_ce_er(z, t, **H))
    with pytest.raises(ValueError, match="inplace_backward"):
        fused_anl.anl_ce_er(z.clone().requires_grad_(True) * 1, t, inplace_backward=True)
    with pytest.raises(ValueError, match="p_min must lie in"):
        fused_anl.anl_ce_er(z, t, p_min=0.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        fused_anl.anl_ce_er(z, t, gamma=0.5)
    with pytest.raises(ValueError, match="p_min must lie in"):  # the fused linear form too
        fused_anl.linear_loss("anl_ce_er", z[:, :4], torch.randn(37, 4, dtype=z.dtype), t,
                              p_min=0.5)


def test_double_backward_through_the_reference():
    z, t = _batch(k=7, n=5)
    x = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fused_anl.anl_ce_er(x, t, double_backward=True, **H), x,
                               create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    y = z.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(reference.anl_ce_er(y, t, **H), y, create_graph=True)
    (gg2,) = torch.autograd.grad(g2.square().sum(), y)
    torch.testing.assert_close(gg, gg2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_row_makes_every_sample_nan(bad):
    """A NaN or +inf in a counted row makes E NaN, hence the loss of every sample (E is
    shared); in an ignored row it changes nothing."""
    z, t = _batch()
    z[5, 3] = bad
    x = z.clone().requires_grad_(True)
    out = fused_anl.anl_ce_er(x, t, reduction="none", backend="triton", **H)
    out.sum().backward()
    assert torch.isnan(out[t != -100]).all()
    assert torch.isnan(x.grad[5]).all()
    z, t = _batch()
    z[2, 3] = bad  # row 2 is ignored
    x = z.clone().requires_grad_(True)
    out = fused_anl.anl_ce_er(x, t, backend="triton", **H)
    out.backward()
    torch.testing.assert_close(out, reference.anl_ce_er(_batch()[0], t, **H))
    assert torch.isfinite(x.grad).all() and (x.grad[2] == 0).all()


def test_second_derivative_raises_without_double_backward():
    z, t = _batch(k=7, n=5)
    x = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fused_anl.anl_ce_er(x, t, **H), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.square().sum(), x)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_linear_path(backend):
    """linear_loss("anl_ce_er", ...) equals the reference on the formed logits: the value
    and the gradients of hidden, weight and bias (several chunks, an ignored row, class
    weights on the rows, every reduction), with the logits never formed whole."""
    g = torch.Generator().manual_seed(7)
    h = (torch.randn(11, 6, generator=g, dtype=torch.float64)).to(DEVICE)
    W = (torch.randn(9, 6, generator=g, dtype=torch.float64) * 2).to(DEVICE)
    b = torch.randn(9, generator=g, dtype=torch.float64).to(DEVICE)
    t = torch.randint(0, 9, (11,), generator=g).to(DEVICE)
    t[4] = -100
    cw = (torch.rand(9, generator=g, dtype=torch.float64) + 0.5).to(DEVICE)
    hyper = dict(alpha=5.0, beta=5.0, lamb=2.0, p_min=1e-4)
    for reduction, w in (("mean", None), ("sum", cw), ("none", None)):
        args = [x.clone().requires_grad_(True) for x in (h, W, b)]
        ours = fused_anl.linear_anl_ce_er(args[0], args[1], t, args[2], reduction=reduction,
                                         class_weight=w, chunk_size=4, backend=backend, **hyper)
        go = torch.rand(ours.shape, generator=g, dtype=torch.float64).to(DEVICE)
        grads = torch.autograd.grad(ours, args, go)
        ref_args = [x.clone().requires_grad_(True) for x in (h, W, b)]
        logits = ref_args[0] @ ref_args[1].t() + ref_args[2]
        ref = reference.anl_ce_er(logits, t, reduction=reduction, weight=w, **hyper)
        ref_grads = torch.autograd.grad(ref, ref_args, go)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        for a, r in zip(grads, ref_grads):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="batch term"):
        fused_anl.linear_loss("anl_ce_er", h, W, t, z_loss=1e-3)
    module = fused_anl.LinearLoss("anl_ce_er", lamb=2.0, chunk_size=4, backend=backend)
    assert "anl_ce_er" in repr(module) and "lamb=2" in repr(module)
    torch.testing.assert_close(module(h, W, t, b), reference.anl_ce_er(h @ W.t() + b, t, lamb=2.0))
