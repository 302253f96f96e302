"""The options every loss takes: ``z_loss``, ``logit_softcap``, ``return_lse``, and CE's
``label_smoothing`` (docs/semantics.md "Options"), on every backend and kernel path,
against the float64 reference and, for label smoothing, against F.cross_entropy itself.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import fused_anl
from fused_anl import reference
from helpers import assert_close_to_reference, edge_case_batch, loss_and_grad

BACKENDS = ["triton", "torch"]
# the kernels on each of their paths; the torch backend has one path
ROUTES = [("triton", "single"), ("triton", "stream"), ("triton", "split"), ("torch", "single")]


@pytest.fixture(params=ROUTES, ids=lambda r: f"{r[0]}-{r[1]}")
def route(request):
    """(backend, kernel path), with the launch policy of the path in force."""
    from conftest import PATHS
    from fused_anl.kernels import launch
    backend, path = request.param
    with launch.config(**PATHS[path]):
        yield backend

# (loss, options): each option alone and in combination, on losses whose terms differ
# (CE: stats1 only; ANL-CE: NCE + NNCE, stats2; NFL+RCE: focal, stats2; AMSE)
CASES = [
    ("ce", dict(z_loss=1e-2)),
    ("ce", dict(logit_softcap=4.0)),
    ("ce", dict(label_smoothing=0.1)),
    ("ce", dict(label_smoothing=0.25, z_loss=1e-3, logit_softcap=6.0)),
    ("anl_ce", dict(z_loss=1e-3, logit_softcap=5.0)),
    ("nfl_rce", dict(logit_softcap=3.0)),
    ("nce_amse", dict(z_loss=1e-2)),
]


def _id(case):
    name, kw = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_options_match_reference_on_every_path(case, route, device):
    """Edge rows (confident, p below p_min, -inf padding, ignored) on the single, streaming
    and split paths, with and without class weights."""
    name, kw = case
    backend = route
    z, t = edge_case_batch(6, 19, device=device, seed=len(kw))
    weight = (torch.rand(19, generator=torch.Generator().manual_seed(3)) + 0.5).to(device)
    for w, reduction in ((None, "mean"), (weight, "none")):
        fn = getattr(fused_anl, name)
        value, grad = loss_and_grad(fn, z, t, backend=backend, weight=w, reduction=reduction, **kw)
        assert_close_to_reference(name, z, t, value=value, grad=grad, weight=w,
                                  reduction=reduction, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_options_half_precision(backend, dtype, device):
    z, t = edge_case_batch(6, 19, device=device, dtype=dtype, seed=5)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, logit_softcap=5.0)
    value, grad = loss_and_grad(fused_anl.ce, z, t, backend=backend, **kw)
    assert_close_to_reference("ce", z, t, value=value, grad=grad, **kw)


@pytest.mark.parametrize("weighted", [False, True])
def test_label_smoothing_is_f_cross_entropy(weighted, route, device):
    """F.cross_entropy(label_smoothing=eps) exactly (float64), ignored samples and class
    weights included: the smoothing sum is weighted by each class's weight and the mean
    divides by the labels' weights."""
    backend = route
    g = torch.Generator().manual_seed(11)
    z = (torch.randn(6, 19, generator=g, dtype=torch.float64) * 3).to(device)
    t = torch.randint(0, 19, (6,), generator=g).to(device)
    t[4] = -100
    w = (torch.rand(19, generator=g, dtype=torch.float64) + 0.5).to(device) if weighted else None
    for eps, reduction in ((0.0, "sum"), (0.1, "mean"), (0.3, "none"), (1.0, "mean")):
        a = z.clone().requires_grad_(True)
        b = z.clone().requires_grad_(True)
        ours = fused_anl.ce(a, t, weight=w, reduction=reduction, label_smoothing=eps,
                            backend=backend)
        theirs = F.cross_entropy(b, t, weight=w, reduction=reduction, label_smoothing=eps)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        go = torch.rand(theirs.shape, generator=g, dtype=torch.float64).to(device)
        (ga,) = torch.autograd.grad(ours, a, go)
        (gb,) = torch.autograd.grad(theirs, b, go)
        gb = torch.where((t == -100)[:, None], 0.0, gb)  # F.ce: 0 there too (finite logits)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-13)


def test_return_lse(route, device):
    """The per-sample lse of the (capped) logits, 0 for an ignored sample, detached; the
    loss is unchanged by asking for it."""
    backend = route
    z, t = edge_case_batch(6, 19, device=device, dtype=torch.float64)
    for cap in (None, 4.0):
        zz = z.clone().requires_grad_(True)
        loss, lse = fused_anl.anl_ce(zz, t, backend=backend, logit_softcap=cap, return_lse=True)
        zc = z if cap is None else reference.softcap(z, cap)
        expect = torch.where(t != -100, torch.logsumexp(zc, 1), 0.0)
        torch.testing.assert_close(lse, expect, rtol=1e-13, atol=1e-13)
        assert lse.shape == t.shape and not lse.requires_grad
        torch.testing.assert_close(loss, fused_anl.anl_ce(z, t, backend=backend,
                                                          logit_softcap=cap))
        loss.backward()  # the lse output takes no part in backward
        assert zz.grad is not None and torch.isfinite(zz.grad).all()


def test_return_lse_spatial_and_inplace(device):
    z = torch.randn(3, 5, 4, dtype=torch.float64, device=device)
    t = torch.randint(0, 5, (3, 4), device=device)
    _, lse = fused_anl.ce(z, t, return_lse=True, reduction="none")
    torch.testing.assert_close(lse, torch.logsumexp(z, 1))
    zz = (z * 1.0).requires_grad_(True)
    y = zz * 1.0
    loss, lse = fused_anl.ce(y, t, return_lse=True, inplace_backward=True)
    torch.testing.assert_close(lse, torch.logsumexp(z, 1))
    loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, device):
    """The options' gradients are true derivatives: gradcheck in float64 (single path and,
    for the kernels, the streaming path), in fast mode (v^T J u against finite differences
    along a random u: a wrong Jacobian entry changes it with probability 1)."""
    from fused_anl.kernels import launch
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(4, 11, generator=g, dtype=torch.float64) * 2).to(device)
    z[1, 3] = float("-inf")
    t = torch.tensor([1, 0, -100, 7], device=device)
    w = (torch.rand(11, generator=g, dtype=torch.float64) + 0.5).to(device)
    cfgs = [dict(), dict(max_single_k=4, block_k=4)] if backend == "triton" else [dict()]
    for cfg in cfgs:
        with launch.config(**cfg), fused_anl.repeatable_backward():
            cases = (("ce", dict(label_smoothing=0.2, z_loss=0.05, logit_softcap=3.0)),
                     ("anl_ce", dict(z_loss=0.05, logit_softcap=2.5)))
            for name, kw in cases[:1] if cfg else cases:
                fn = getattr(fused_anl, name)
                x = z.clone().requires_grad_(True)
                assert torch.autograd.gradcheck(
                    lambda x: fn(x, t, weight=w, backend=backend, **kw), (x,), eps=1e-6,
                    atol=1e-7, fast_mode=True)


def test_softcap_non_finite_logits(device):
    """-inf stays absent under the cap; +inf and NaN give a NaN row (not the cap's finite
    value); an ignored row with NaN logits has a zero gradient."""
    for backend in BACKENDS:
        z = torch.randn(4, 6, dtype=torch.float64, device=device)
        z[0, 5] = float("-inf")
        z[1, 2] = float("inf")
        z[2, 0] = float("nan")
        z[3, 1] = float("nan")
        t = torch.tensor([1, 0, 3, -100], device=device)
        zz = z.clone().requires_grad_(True)
        rows = fused_anl.ce(zz, t, reduction="none", logit_softcap=2.0, backend=backend)
        assert torch.isfinite(rows[0]) and torch.isnan(rows[1]) and torch.isnan(rows[2])
        assert rows[3] == 0
        rows.sum().backward()
        assert zz.grad[0, 5] == 0 and torch.isfinite(zz.grad[0]).all()
        assert torch.isnan(zz.grad[1]).all() and torch.isnan(zz.grad[2]).all()
        assert (zz.grad[3] == 0).all()
        ref = reference.ce(z[:1], t[:1], logit_softcap=2.0, reduction="none")
        torch.testing.assert_close(rows[:1].detach(), ref)


def test_z_loss_value_by_hand(device):
    """The definition, written out: mean over counted samples of CE + z * lse^2."""
    z = torch.randn(5, 7, dtype=torch.float64, device=device)
    t = torch.tensor([0, 1, -100, 3, 6], device=device)
    keep = t != -100
    lse = torch.logsumexp(z, 1)
    ce = lse - z.gather(1, t.clamp_min(0)[:, None])[:, 0]
    expect = ((ce + 1e-2 * lse**2) * keep).sum() / keep.sum()
    for backend in BACKENDS:
        torch.testing.assert_close(fused_anl.ce(z, t, z_loss=1e-2, backend=backend), expect)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_path_options(backend, device):
    """The fused linear loss with the options equals the plain loss of the formed logits."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(10, 6, generator=g, dtype=torch.float64).to(device)
    W = torch.randn(13, 6, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(13, generator=g, dtype=torch.float64).to(device)
    t = torch.randint(0, 13, (10,), generator=g).to(device)
    t[3] = -100
    cw = (torch.rand(13, generator=g, dtype=torch.float64) + 0.5).to(device)
    for name, kw in (("ce", dict(label_smoothing=0.1, z_loss=1e-2, logit_softcap=3.0)),
                     ("anl_ce", dict(z_loss=1e-2, logit_softcap=3.0))):
        for reduction in ("mean", "none"):
            args = [x.clone().requires_grad_(True) for x in (h, W, b)]
            ours = fused_anl.linear_loss(name, *args[:2], t, args[2], reduction=reduction,
                                         class_weight=cw, chunk_size=4, backend=backend, **kw)
            gs = torch.autograd.grad(ours.sum(), args)
            ref_args = [x.clone().requires_grad_(True) for x in (h, W, b)]
            logits = ref_args[0] @ ref_args[1].t() + ref_args[2]
            ref = reference.loss_by_name(name, logits, t, reduction=reduction, weight=cw, **kw)
            rgs = torch.autograd.grad(ref.sum(), ref_args)
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
            for a, r in zip(gs, rgs):
                torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_modules_take_the_options():
    crit = fused_anl.CELoss(label_smoothing=0.1, z_loss=1e-4, logit_softcap=30.0)
    assert "label_smoothing=0.1" in repr(crit) and "z_loss=0.0001" in repr(crit)
    assert "logit_softcap=30" in repr(crit)
    z = torch.randn(4, 9, dtype=torch.float64)
    t = torch.randint(0, 9, (4,))
    torch.testing.assert_close(crit(z, t), reference.ce(z, t, label_smoothing=0.1, z_loss=1e-4,
                                                        logit_softcap=30.0))
    crit = fused_anl.ANLCELoss(z_loss=1e-3)
    torch.testing.assert_close(crit(z, t), reference.anl_ce(z, t, z_loss=1e-3))
    assert fused_anl.get_loss("ce", label_smoothing=0.2).options == {"label_smoothing": 0.2}
    with pytest.raises(TypeError, match="label_smoothing"):
        fused_anl.NCELoss(label_smoothing=0.1)
    with pytest.raises(ValueError, match="batch term"):
        fused_anl.ANLCEERLoss(z_loss=1e-3)


@pytest.mark.parametrize("bad, match", [
    (dict(z_loss=-1.0), "z_loss must be >= 0"),
    (dict(z_loss=math.inf), "z_loss must be a finite number"),
    (dict(logit_softcap=0.0), "logit_softcap must be > 0"),
    (dict(logit_softcap=-3.0), "logit_softcap must be > 0"),
    (dict(label_smoothing=1.5), r"label_smoothing must lie in \[0, 1\]"),
    (dict(return_lse=1), "return_lse must be a bool"),
])
def test_bad_options_raise(bad, match):
    z, t = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises((ValueError, TypeError), match=match):
        fused_anl.ce(z, t, **bad)


def test_options_refused_where_not_available():
    z, t = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="label_smoothing is an option of ce only"):
        fused_anl.anl_ce(z, t, label_smoothing=0.1)
    with pytest.raises(ValueError, match="batch term"):
        fused_anl.anl_ce_er(z, t, z_loss=1e-3)
    with pytest.raises(TypeError, match="label_smoothing"):
        fused_anl.linear_loss("nce", torch.randn(3, 4), torch.randn(5, 4), t, label_smoothing=0.1)


def test_double_backward_with_options():
    """double_backward=True differentiates the reference with the same options."""
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2, 5])
    kw = dict(label_smoothing=0.1, z_loss=1e-2, logit_softcap=3.0)
    (g,) = torch.autograd.grad(fused_anl.ce(z, t, double_backward=True, **kw), z,
                               create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), z)
    z2 = z.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(reference.ce(z2, t, **kw), z2, create_graph=True)
    (h2,) = torch.autograd.grad(g2.square().sum(), z2)
    torch.testing.assert_close(h, h2)
