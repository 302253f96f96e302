"""AMSE, JAL-CE and JAL-FL (docs/semantics.md "AMSE"): parity with the published
definition, confident rows in float32, padding, ignore_index, every backend and path.

The generic tests (tests/test_losses.py, test_gradcheck.py, test_nonfinite_torch.py, ...)
iterate over LOSSES and so run these losses too; this file adds what is particular to
AMSE: the batch-mean parity with the Joint Asymmetric Loss code's ``mean`` over
``N x K`` entries and its presets, and the precision of a confident correct row.
"""
import pytest
import torch
import torch.nn.functional as F

import fused_anl

from conftest import DEVICE
from helpers import assert_close_to_reference, edge_case_batch, loss_and_grad

JAL = ["amse", "nce_amse", "nfl_amse"]
EPS32 = 2.0**-24


def _published(z, t, alpha, beta, a, active):
    """The JAL definitions as batch means, from the formulas (float64)."""
    z = z.double()
    p = F.softmax(z, 1)
    amse = ((p - a * F.one_hot(t, z.shape[1]).double()) ** 2).mean()
    lp = F.log_softmax(z, 1)
    if active == "nce":
        act = (lp.gather(1, t[:, None])[:, 0] / lp.sum(1)).mean()
    elif active == "nfl":
        w = (1 - p) ** 0.5
        act = ((w * lp).gather(1, t[:, None])[:, 0] / (w * lp).sum(1)).mean()
    else:
        act = 0.0
    return alpha * act + beta * amse


# JAL config.py: (alpha, beta, a) per data set
PRESETS = {"cifar10": (1, 1, 30), "cifar100": (5, 1, 20), "webvision": (50, 1, 30),
           "clothing1m": (5, 0.1, 5)}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_published_batch_mean(preset, backend):
    alpha, beta, a = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(16, 10, generator=g, dtype=torch.float64) * 3).to(DEVICE)
    t = torch.randint(0, 10, (16,), generator=g).to(DEVICE)
    for name, active in (("nce_amse", "nce"), ("nfl_amse", "nfl")):
        v = getattr(fused_anl, name)(z, t, alpha=alpha, beta=beta, a=a, backend=backend)
        want = _published(z.cpu(), t.cpu(), alpha, beta, a, active)
        assert abs(float(v) - float(want)) <= 1e-12 * max(1.0, abs(float(want))), name
    v = fused_anl.amse(z, t, a=a, backend=backend)
    assert abs(float(v) - float(_published(z.cpu(), t.cpu(), 0, 1, a, None))) <= 1e-12 * a * a


def test_defaults_are_the_cifar10_setting():
    assert fused_anl.LOSSES["nce_amse"].hyper == dict(alpha=1.0, beta=1.0, a=30.0)
    assert fused_anl.LOSSES["nfl_amse"].hyper == dict(alpha=1.0, beta=1.0, gamma=0.5, a=30.0)
    assert fused_anl.LOSSES["amse"].hyper == dict(a=30.0)
    assert fused_anl.NCEAMSELoss().hyper == dict(alpha=1.0, beta=1.0, a=30.0)


def _confident(k, delta, dtype=torch.float32):
    """Rows whose label holds 1 - delta of the probability (spread over the others)."""
    z = torch.zeros(4, k, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    # p_y / p_other = (1 - delta) (k - 1) / delta
    gap = torch.log(torch.tensor((1 - delta) * (k - 1) / delta, dtype=torch.float64))
    z[torch.arange(4), t] = gap
    z[1] += torch.linspace(-1e-3, 1e-3, k, dtype=torch.float64)  # not all equal
    return z.to(dtype).to(DEVICE), t.to(DEVICE)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("a", [1.0, 30.0, 0.5])
@pytest.mark.parametrize("delta", [1e-4, 1e-12])
def test_confident_correct_rows_float32(backend, a, delta):
    """Error model: L = ((a - p_y)^2 + Q2) / K is a sum of nonnegative terms, each with a
    few eps of relative error, ``a - p_y`` taken as ``(a - 1) + sum_{k != y} p_k`` (an
    absolute error of ~eps |a - 1| + eps (1 - p_y)), and each p with the relative error
    2 eps |l| of its exp's rounded argument: bound (16 + 4 max|l|) eps |L| + 4 eps |a - 1|
    |D| / K.
    The gradient: c1 = -(2/K) p_y D and c2 p_y = (2/K)(p_y D - Q2) p_y cancel in the
    label's column to ~eps |D| p_y 2/K; another column is p_j (p_j + p_y D - Q2) 2/K, a
    few eps of itself plus ~eps p_j (|D| + 1) 2/K: bound 16 eps (2/K)(|D| p_y [j == y] + p_j)
    + (16 + 2 max|z|) eps |g|."""
    k = 7
    z, t = _confident(k, delta)
    zz = z.clone().requires_grad_(True)
    v = fused_anl.amse(zz, t, a=a, reduction="none", backend=backend)
    (g,) = torch.autograd.grad(v.sum(), zz)
    # the oracle: float64, from the definition's factored forms with 1 - p_y written as
    # the sum of the other p's (the plain float64 reference loses ~1e-16 / (1 - p_y) of
    # relative precision there: 1e-4 at p_y = 1 - 1e-12)
    p = torch.softmax(z.double(), 1)
    onehot = torch.nn.functional.one_hot(t, k).bool()
    po = p.masked_fill(onehot, 0.0)
    q2, bc = (po * po).sum(1, keepdim=True), po.sum(1, keepdim=True)
    py = p.gather(1, t[:, None])
    D = (a - 1.0) + bc if a >= 1 else a - py
    vr = ((D * D + q2) / k)[:, 0]
    gr = torch.where(onehot, -(2 / k) * py * (D * bc + q2), (2 / k) * p * (p + py * D - q2))
    # exp(l) of a log-probability l is ex2(l * log2 e) on the GPU (tl.exp and the
    # kernels' exp2 alike): the rounding of the float32 argument and of log2 e, each at
    # most EPS32 relative, is an absolute error 2 EPS32 |l| log2 e in the exponent of 2,
    # a relative error 2 EPS32 |l| of p; L is quadratic in the p's (D^2 with D = (a - 1) +
    # BC, and Q2), hence up to 4 EPS32 max|l| |L| more, max|l| over the row's classes
    # (29.4 here for delta = 1e-12: about 118 EPS32, which the 16 EPS32 left out)
    lmax = float((-torch.log(p)).max())
    bound_v = ((16 + 4 * lmax) * EPS32 * vr.abs() + 4 * EPS32 * abs(a - 1) * D[:, 0].abs() / k
               + 1e-45)
    assert torch.all((v.double() - vr).abs() <= bound_v), (v, vr)
    # (16 + 2 max|z|) eps |g|: exp() turns the absolute error eps |z - m| of a
    # log-probability into a relative error of p_j (tests/helpers.py)
    zmax = float(z.abs().max())
    bound_g = (16 * EPS32 * (2 / k) * (D.abs() * py * onehot + p)
               + (16 + 2 * zmax) * EPS32 * gr.abs() + 1e-45)
    err = (g.double() - gr).abs()
    assert torch.all(err <= bound_g), (err / bound_g).max()


@pytest.mark.parametrize("name", JAL)
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_edge_rows_every_dtype(name, backend, dtype):
    """Confident, large-scale, -inf padded (K = present count) and ignored rows."""
    z, t = edge_case_batch(8, 37, dtype=dtype, device=DEVICE, seed=5)
    v, g = loss_and_grad(getattr(fused_anl, name), z, t, backend=backend, reduction="none")
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none")
    assert v[3] == 0 and torch.all(g[3] == 0)  # the ignored row


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_padding_counts_present_classes_only(backend):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 6, generator=g, dtype=torch.float64).to(DEVICE)
    t = torch.tensor([0, 1, 2], device=DEVICE)
    zp = torch.cat([z, torch.full((3, 4), float("-inf"), dtype=z.dtype, device=DEVICE)], 1)
    v = fused_anl.amse(z, t, reduction="none", backend=backend)
    vp = fused_anl.amse(zp, t, reduction="none", backend=backend)
    torch.testing.assert_close(v, vp, rtol=1e-13, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nan_row(backend):
    z, t = edge_case_batch(6, 9, device=DEVICE, seed=3)
    z[4, 2] = float("nan")
    v, g = loss_and_grad(fused_anl.nce_amse, z, t, backend=backend, reduction="none")
    assert torch.isnan(v[4]) and torch.all(torch.isnan(g[4]))
    keep = torch.tensor([0, 1, 2, 5])
    assert torch.all(torch.isfinite(v[keep])) and torch.all(torch.isfinite(g[keep]))


@pytest.mark.parametrize("name", JAL)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_linear_path(name, backend):
    """linear_<name>(hidden, weight, target) is <name>(hidden @ weight.T + bias, target),
    its gradients included (row chunks of 3, one ignored row)."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    w = torch.randn(11, 5, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    b = torch.randn(11, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    t = torch.randint(0, 11, (7,), generator=g).to(DEVICE)
    t[2] = -100
    v = getattr(fused_anl, f"linear_{name}")(h, w, t, b, chunk_size=3, backend=backend)
    grads = torch.autograd.grad(v, (h, w, b))
    vr = getattr(fused_anl.reference, name)(h @ w.T + b, t)
    grads_r = torch.autograd.grad(vr, (h, w, b))
    torch.testing.assert_close(v, vr, rtol=1e-10, atol=0)
    for x, xr in zip(grads, grads_r):
        torch.testing.assert_close(x, xr, rtol=1e-10, atol=1e-12)
