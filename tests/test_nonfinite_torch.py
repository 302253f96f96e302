"""Non-finite logits and empty batches on the torch backend, against the reference.

Rule: a NaN or a +inf anywhere in a row makes that row's loss (unless the row is
ignored: 0) and its whole gradient row NaN, as ``F.cross_entropy`` and the reference
give; ``-inf`` is an absent class (padding); finite logits near the float32 limit give
the reference's result in the logits' own precision (float32 logits: the float32
reference, whose sums overflow where the float64 one's do not; float64 logits: the
float64 reference). Values are placed at random positions, with one ignored row that
holds a bad value too.
"""
import zlib

import pytest
import torch
import torch.nn.functional as F

import fused_anl
from fused_anl import _registry, _torch_backend
from helpers import compute_tol, loss_and_grad

ALL = list(_registry.LOSSES)
KINDS = ["nan", "pinf", "neginf", "huge"]
N, K = 7, 11
IGNORED_ROW = N - 1


def _batch(kind, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, K, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, K, (N,), generator=g)
    t[IGNORED_ROW] = -100
    rows = torch.randperm(N, generator=g)[:4].tolist()
    if IGNORED_ROW not in rows:
        rows[-1] = IGNORED_ROW
    for r in rows:
        cols = torch.randperm(K, generator=g)
        if kind in ("nan", "pinf"):
            z[r, cols[0]] = float("nan") if kind == "nan" else float("inf")
        elif kind == "neginf":
            n_absent = int(torch.randint(1, K - 1, (1,), generator=g))
            absent = cols[:n_absent]
            z[r, absent] = float("-inf")
            if r != IGNORED_ROW and bool((absent == t[r]).any()):
                t[r] = cols[n_absent]  # the label on a present class
        else:  # near the float32 limit, one huge logit of each sign
            z[r, cols[0]], z[r, cols[1]] = 3e38, -3e38
    return z.to(dtype), t


def _check(name, z, t, reduction):
    fused = loss_and_grad(lambda a, b: getattr(fused_anl, name)(a, b, reduction=reduction,
                                                                backend="torch"), z, t)
    ref = loss_and_grad(lambda a, b: getattr(fused_anl.reference, name)(a, b, reduction=reduction),
                        z, t)
    # An ignored row with no NaN / +inf has a zero gradient. The reference can give NaN
    # there (autograd's 0 * inf through the ignored row's -inf log-probabilities: an
    # absent class, or -3e38 - 3e38 overflowing in float32), so that row is checked
    # against 0.
    finite_ignored = (t == -100) & ~(torch.isnan(z) | (z == float("inf"))).any(1)
    ref = (ref[0], torch.where(finite_ignored[:, None], 0.0, ref[1]))
    # the float32 error model of tests/helpers.py: twice the float32 reference's own
    # gradient error (against float64) on top of the relative bound
    floor32 = 0.0
    if z.dtype != torch.float64:
        g64 = loss_and_grad(lambda a, b: getattr(fused_anl.reference, name)(a, b, reduction=reduction),
                            z.double(), t)[1]
        d = (ref[1].double() - g64).abs()
        d = d[torch.isfinite(d) & ~finite_ignored[:, None].expand_as(d)]
        floor32 = 2 * float(d.max()) if d.numel() else 0.0
    tol = compute_tol(z.dtype)
    for what, got, want in (("loss", *(x[0] for x in (fused, ref))),
                            ("grad", *(x[1] for x in (fused, ref)))):
        got, want = got.double(), want.double()
        nan_g, nan_w = torch.isnan(got), torch.isnan(want)
        assert torch.equal(nan_g, nan_w), (
            f"{name} {reduction} {what}: NaN at {nan_g.nonzero().tolist()}, "
            f"reference NaN at {nan_w.nonzero().tolist()}")
        ok = ~nan_w
        g, w = got[ok], want[ok]
        inf = torch.isinf(w)
        assert torch.equal(g[inf], w[inf]), f"{name} {reduction} {what}: infinities differ"
        g, w = g[~inf], w[~inf]
        if w.numel() == 0:
            continue
        if what == "loss":
            bound = tol * w.abs().clamp_min(1.0)
        else:
            bound = tol * w.abs().max() + tol * w.abs() + floor32
        err = (g - w).abs()
        assert torch.all(err <= bound), (
            f"{name} {reduction} {what}: error {err.max():.3g} (reference {w[err.argmax()]:.3g})")


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ALL)
def test_nonfinite_matches_reference(name, kind, reduction):
    for seed in range(3):
        for dtype in (torch.float32, torch.float64):
            z, t = _batch(kind, dtype, seed=zlib.crc32(f"{name}/{kind}/{seed}".encode()))
            _check(name, z, t, reduction)


@pytest.mark.parametrize("kind", ["nan", "pinf"])
def test_nan_and_pinf_rows_are_nan_like_cross_entropy(kind):
    z, t = _batch(kind, torch.float32, seed=3)
    bad = ~torch.isfinite(z).all(1) & (z != float("-inf")).all(1)
    counted = t != -100
    for name in ALL:
        v, g = loss_and_grad(lambda a, b: getattr(fused_anl, name)(a, b, reduction="none",
                                                                    backend="torch"), z, t)
        assert torch.isnan(v[bad & counted]).all() and (v[bad & ~counted] == 0).all(), name
        assert torch.isfinite(v[~bad]).all(), name
        assert torch.isnan(g[bad & counted]).all() and torch.isfinite(g[~bad]).all(), name
        # an ignored row takes no part whatever its logits (F.cross_entropy: NaN there)
        assert (g[bad & ~counted] == 0).all(), name
    ce_v, ce_g = loss_and_grad(lambda a, b: F.cross_entropy(a, b, reduction="none"), z, t)
    v, g = loss_and_grad(lambda a, b: fused_anl.ce(a, b, reduction="none", backend="torch"), z, t)
    assert torch.equal(torch.isnan(v), torch.isnan(ce_v))
    assert torch.equal(torch.isnan(g[counted]), torch.isnan(ce_g[counted]))


def test_huge_logits_example():
    """[[3e38, -3e38, 0]]: finite, as the reference (float32: -3e38 - 3e38 overflows to an
    exactly zero probability, as it does in the reference)."""
    for dtype in (torch.float32, torch.float64):
        z = torch.tensor([[3e38, -3e38, 0.0]], dtype=dtype)
        for name in ALL:
            _check(name, z, torch.tensor([0]), "none")


def test_chunked_rows_keep_nan_rows_apart(monkeypatch):
    """A bad row in one chunk poisons that row only, whatever the chunking."""
    monkeypatch.setattr(_torch_backend, "CHUNK_ELEMENTS", 2 * K)
    z, t = _batch("nan", torch.float32, seed=5)
    for name in ("anl_ce", "gce", "nce_rce", "anl_fl"):
        _check(name, z, t, "none")


def test_backend_empty_batch_rows():
    """row_loss on N = 0: empty loss rows and a (0, K, 1) gradient."""
    h = fused_anl._hyper.by_name(fused_anl._hyper.constants(
        _registry.resolve_hyper(_registry.LOSSES["anl_ce"], {}), _registry.P_NNCE))
    loss, grad = _torch_backend.row_loss(
        torch.empty(0, 5, 1), torch.zeros(0, dtype=torch.long), None, h, None,
        active=_registry.A_NCE, passive=_registry.P_NNCE, exact=False, ignore_index=-100,
        compute_grad=True)
    assert loss.shape == (0,) and grad.shape == (0, 5, 1)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", ["ce", "anl_ce", "gce"])
def test_empty_batch_backward(name, reduction):
    z = torch.randn(0, 5, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    out = getattr(fused_anl, name)(z, t, reduction=reduction, backend="torch")
    ref = getattr(fused_anl.reference, name)(z, t, reduction=reduction)
    out.sum().backward()
    assert z.grad.shape == (0, 5)
    assert out.shape == ref.shape
    assert torch.equal(z.grad, torch.zeros(0, 5))
