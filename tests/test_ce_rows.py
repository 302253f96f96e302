"""Plain cross entropy's own chunk routine on the torch backend (``_torch_backend._ce_rows``).

It must give what the general path (``_rows`` with the CE epilogue) gives, up to rounding,
with the same non-finite rule, on every input the general path takes; and the rows whose
label probability underflows (where ``log(p_y)`` alone would be -inf or imprecise) must
still match the float64 reference.
"""
import pytest
import torch

import fused_anl
from fused_anl import _hyper, _registry, _torch_backend
from helpers import assert_close_to_reference, compute_tol, edge_case_batch, loss_and_grad

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def general_path(monkeypatch):
    """Run plain CE through the general path (the gate never matches)."""
    def use():
        monkeypatch.setattr(_torch_backend, "A_CE", -1)
    return use


def _batch(dtype, ignore_index=-100):
    z, t = edge_case_batch(12, 9, dtype=torch.float64, ignore_index=ignore_index)
    z[4, 2] = NAN                      # a counted NaN row
    z[5, 0] = INF                      # a counted +inf row
    z[6, 0] = -INF                     # a padded class
    z[7, 1] = NAN
    t[7] = ignore_index                # an ignored NaN row: gradient exactly 0
    z[8] = -INF
    t[8] = ignore_index                # an ignored row with no present class: gradient 0
    z[9] = torch.linspace(0, 1, 9)
    z[9, t[9]] = -150.0                # p_y underflows (float32 and bf16)
    z[10] = torch.linspace(0, 1, 9)
    z[10, t[10]] = -95.0               # p_y subnormal in float32
    return z.to(dtype), t


def _run(z, t, **kw):
    return loss_and_grad(lambda a, b: fused_anl.ce(a, b, backend="torch", **kw), z, t)


def _same(a, b, dtype):
    tol = compute_tol(dtype) if dtype != torch.bfloat16 else 1e-2
    for x, y in zip(a, b):
        assert torch.equal(torch.isnan(x), torch.isnan(y))
        torch.testing.assert_close(x.double(), y.double(), rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_general_path(dtype, reduction, weighted, general_path):
    z, t = _batch(dtype)
    kw = dict(reduction=reduction)
    if weighted:
        kw["weight"] = torch.linspace(0.5, 2.0, z.shape[1], dtype=torch.float64).to(dtype)
    fast = _run(z, t, **kw)
    general_path()
    slow = _run(z, t, **kw)
    _same(fast, slow, dtype)
    assert torch.all(fast[1][7] == 0) and torch.all(fast[1][8] == 0)  # the ignored rows


def test_ignore_index_inside_the_classes(general_path):
    z, t = _batch(torch.float32, ignore_index=3)
    fast = _run(z, t, reduction="none", ignore_index=3)
    general_path()
    _same(fast, _run(z, t, reduction="none", ignore_index=3), torch.float32)


def test_spatial_and_inplace(general_path):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 7, 4, 5, generator=g) * 3
    t = torch.randint(0, 7, (3, 4, 5), generator=g)
    t[0, 0, 0] = -100
    z[1, 0, 2, 3] = -INF
    t[1, 2, 3] = 1
    fast = _run(z, t)
    zi = z.clone().requires_grad_(True)
    y = zi * 1.0
    fused_anl.ce(y, t, backend="torch", inplace_backward=True).backward()
    general_path()
    slow = _run(z, t)
    _same(fast, slow, torch.float32)
    _same((fast[1],), (zi.grad,), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflowing_label_probability_against_reference(dtype):
    """Finite rows only (the reference's gradient of an absent class is NaN)."""
    z = torch.linspace(0, 1, 9, dtype=dtype).repeat(4, 1)
    t = torch.tensor([0, 3, 5, 8])
    z[0, 0] = -150.0
    z[1, 3] = -95.0
    z[2, 5] = -800.0   # underflows in float64 too
    z[3, 8] = -30.0
    v, g = _run(z, t, reduction="none")
    assert torch.all(torch.isfinite(v)) and torch.all(torch.isfinite(g))
    assert_close_to_reference("ce", z, t, value=v, grad=g, reduction="none")


def test_gate(monkeypatch):
    """The routine runs for plain CE only (SCE has the same active term)."""
    calls = []
    real = _torch_backend._ce_rows

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(_torch_backend, "_ce_rows", counting)
    z, t = edge_case_batch(6, 5)
    fused_anl.ce(z, t, backend="torch")
    assert calls
    calls.clear()
    fused_anl.sce(z, t, backend="torch")
    assert not calls


def _row_loss(z, t, weight=None, den=None, ignore_index=-100, compute_grad=True):
    spec = _registry.spec_of("ce")
    hv = _hyper.by_name(_hyper.constants(_registry.resolve_hyper(spec, {}), spec.passive,
                                         spec.active))
    return _torch_backend.row_loss(z[:, :, None], t, weight, hv, den, active=spec.active,
                                   passive=spec.passive, exact=True, ignore_index=ignore_index,
                                   compute_grad=compute_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("compute_grad", [True, False])
def test_rows_the_checks_refuse_on_cpu(dtype, compute_grad, general_path):
    """What the CPU entry point refuses (the class-parallel and CUDA torch paths can
    reach it): a counted row with no present class, a label on an absent class, a label
    outside [0, K). Each is a NaN loss and a NaN gradient row."""
    z, t = _batch(dtype)
    z[1] = -INF                        # no present class
    z[2, t[2]] = -INF                  # the label on an absent class
    t[11] = 9                          # a label outside [0, K)
    w = torch.linspace(0.5, 2.0, z.shape[1], dtype=dtype)
    den = torch.tensor([3.0], dtype=dtype)
    fast = _row_loss(z, t, w, den, compute_grad=compute_grad)
    general_path()
    slow = _row_loss(z, t, w, den, compute_grad=compute_grad)
    for a, b in zip(fast, slow):
        if a is None:
            assert b is None
            continue
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        torch.testing.assert_close(a, b, rtol=compute_tol(dtype), atol=compute_tol(dtype),
                                   equal_nan=True)
    bad = [1, 2, 4, 5, 11]
    assert torch.isnan(fast[0][bad]).all()
    assert not torch.isnan(fast[0][[0, 3, 6, 7, 8, 9, 10]]).any()
    if compute_grad:
        assert torch.isnan(fast[1][bad]).all()
        assert torch.all(fast[1][[7, 8]] == 0)


def test_backward_gets_no_zero_filled_gradient(monkeypatch):
    """The stored-gradient output of the fused loss's autograd function is never
    differentiated: autograd must not fill an N x K zero tensor for it in backward
    (that doubled the peak memory of fwd+bwd)."""
    from fused_anl import functional
    seen = []
    real = functional._FusedLoss.backward

    def spy(ctx, grad_out, grad_stored, grad_lse):
        seen.append(grad_stored)
        seen.append(grad_lse)
        return real(ctx, grad_out, grad_stored, grad_lse)

    monkeypatch.setattr(functional._FusedLoss, "backward", staticmethod(spy))
    z, t = edge_case_batch(6, 5)
    z.requires_grad_(True)
    for name in ("ce", "anl_ce"):
        z.grad = None
        getattr(fused_anl, name)(z, t, backend="torch").backward()
        assert z.grad is not None
    assert seen == [None] * 4  # (stored gradient, lse) per call
