"""No silent wrong answers: non-finite logits, empty batches, weights, second derivatives,
reuse of overwritten logits, torch.func transforms, sliced labels, the free backward.

Every fused result is the reference's (NaN exactly where the reference is NaN) or a
clear error."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_anl
from conftest import DEVICE, PATHS
from fused_anl.kernels import launch
from helpers import assert_close_to_reference, loss_and_grad

ALL = sorted(fused_anl.LOSSES)
INTERPRETING = DEVICE == "cpu"


def _fused(name, z, t, backend, reduction="none", **kw):
    x = z.clone().requires_grad_(True)
    out = getattr(fused_anl, name)(x, t, backend=backend, reduction=reduction, **kw)
    go = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    out.backward(go)
    return out.detach(), x.grad, go


def _reference(name, z, t, go, reduction="none", **kw):
    x = z.clone().requires_grad_(True)
    out = getattr(fused_anl.reference, name)(x, t, reduction=reduction, **kw)
    out.backward(go)
    return out.detach(), x.grad


def _nonfinite_batch(seed, k=13, n=6, dtype=torch.float32):
    """Row 0: a NaN; row 1: a +inf; row 2: -inf padding; row 3: huge finite logits of both
    signs (z - max overflows float32 to -inf); rows 4, 5: plain. Positions random."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, k, (n,), generator=g)
    cols = torch.randperm(k, generator=g)
    z[0, cols[0]] = float("nan")
    z[1, cols[1]] = float("inf")
    z[2, cols[2:5]] = float("-inf")
    if t[2] in cols[2:5]:
        t[2] = cols[5]
    z[3, cols[6]] = 3e38
    z[3, cols[7]] = -3e38
    if t[3] in cols[6:8]:  # a label on the huge logits: float32 NFL is NaN, reference too
        t[3] = cols[8]
    return z.to(dtype).to(DEVICE), t.to(DEVICE)


def _check_nan_pattern(name, z, t, backend, reduction="none"):
    v, g, go = _fused(name, z, t, backend, reduction)
    rv, rg = _reference(name, z, t, go, reduction)
    assert torch.equal(torch.isnan(v), torch.isnan(rv)), (name, backend, v, rv)
    assert torch.equal(torch.isnan(g), torch.isnan(rg)), (name, backend, g, rg)
    return v, g, rv, rg


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("backend,path", [("torch", "single")] + [("triton", p) for p in PATHS])
def test_nonfinite_rows_match_the_reference(name, backend, path):
    """NaN or +inf in a row: that row's loss and gradient are NaN (every element), on every
    path; -inf padding and huge finite logits: the reference's values."""
    z, t = _nonfinite_batch(seed=ALL.index(name))
    with launch.config(**PATHS[path]):
        v, g, rv, rg = _check_nan_pattern(name, z, t, backend)
    assert torch.isnan(v[:2]).all() and torch.isnan(g[:2]).all()
    finite = slice(2, None)
    torch.testing.assert_close(v[finite], rv[finite], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g[finite], rg[finite], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["anl_ce", "nce_rce", "anl_fl", "ce", "nfl_amse"])
@pytest.mark.parametrize("path", ["single", "stream", "split"])
def test_nonfinite_rows_with_2_byte_logits(name, path):
    """The same batch with 37 classes in bf16, whose streaming and split passes take the
    leftover columns (37 % 8 = 5) apart and read the rest unmasked (kernels/row_loss.py
    ``_first_block_end``), and whose single block takes the policy's compact-row entries
    (NCE+RCE: a register cap and LEAN, which reads the present classes from the logits
    again): NaN rows where the reference has them; the -inf padded and the
    plain rows within tests/helpers.py's bf16 error model; the row of +-3e38 logits (which
    float32 arithmetic cannot take exactly, here or in the reference) as the single block
    computes it, within two bf16 roundings."""
    z, t = _nonfinite_batch(seed=ALL.index(name), k=37, dtype=torch.bfloat16)
    assert launch.plan(6, 37, launch.LaunchConfig(**PATHS[path])).path == path
    with launch.config(**PATHS[path]):
        v, g, rv, rg = _check_nan_pattern(name, z, t, "triton")
    assert torch.isnan(v[:2]).all() and torch.isnan(g[:2]).all()
    rows = [2, 4, 5]
    with launch.config(**PATHS[path]):
        v, g = loss_and_grad(getattr(fused_anl, name), z[rows], t[rows], backend="triton",
                             reduction="none")
    assert_close_to_reference(name, z[rows], t[rows], value=v, grad=g, reduction="none")
    with launch.config(**PATHS[path]):
        v3, g3 = loss_and_grad(getattr(fused_anl, name), z[3:4], t[3:4], backend="triton")
    s3, gs3 = loss_and_grad(getattr(fused_anl, name), z[3:4], t[3:4], backend="triton")
    torch.testing.assert_close(v3, s3, rtol=1e-5, atol=0)
    torch.testing.assert_close(g3.float(), gs3.float(), rtol=2 * 2.0 ** -8, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_nonfinite_mean_is_nan_but_other_rows_keep_their_gradient(backend):
    z, t = _nonfinite_batch(seed=3)
    v, g, go = _fused("anl_ce", z, t, backend, reduction="mean")
    rv, rg = _reference("anl_ce", z, t, go, reduction="mean")
    assert torch.isnan(v) and torch.isnan(rv)
    assert torch.isfinite(g[2:]).all()
    torch.testing.assert_close(g[2:], rg[2:], rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None, derandomize=True)  # the same examples every run (CI)
@given(name=st.sampled_from(ALL), backend=st.sampled_from(["triton", "torch"]),
       k=st.integers(2, 40), seed=st.integers(0, 2**31 - 1),
       kinds=st.lists(st.sampled_from(["nan", "inf", "-inf", "huge", "-huge"]), min_size=1,
                      max_size=4))
def test_property_nonfinite_anywhere(name, backend, k, seed, kinds):
    g = torch.Generator().manual_seed(seed)
    n = 3
    z = torch.randn(n, k, generator=g) * 4
    t = torch.randint(0, k, (n,), generator=g)
    values = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 3e38, "-huge": -3e38}
    for kind in kinds:
        r, c = int(torch.randint(0, n, (1,), generator=g)), int(torch.randint(0, k, (1,), generator=g))
        if kind == "-inf" and c == t[r]:
            continue  # a label on an absent class is an input error (tested in test_api)
        z[r, c] = values[kind]
    if torch.isneginf(z).all(1).any():
        return
    z, t = z.to(DEVICE), t.to(DEVICE)
    with launch.config(**PATHS["stream"]):
        v, gr, rv, rg = _check_nan_pattern(name, z, t, backend)
    ok = ~torch.isnan(rv)
    torch.testing.assert_close(v[ok], rv[ok], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gr[ok], rg[ok], rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("path", ["single", "stream", "split", "inplace", "linear"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_through_backward(backend, path, reduction):
    """N = 0: the loss of torch (mean: NaN, sum: 0, none: empty) and a zero (0, K) gradient."""
    t = torch.zeros(0, dtype=torch.long, device=DEVICE)
    expected = F.cross_entropy(torch.zeros(0, 5, device=DEVICE), t, reduction=reduction)
    with launch.config(**PATHS.get(path, {})):
        if path == "linear":
            h = torch.randn(0, 3, device=DEVICE, requires_grad=True)
            w = torch.randn(5, 3, device=DEVICE, requires_grad=True)
            out = fused_anl.linear_loss("anl_ce", h, w, t, reduction=reduction, backend=backend)
            out.sum().backward()
            assert h.grad.shape == (0, 3) and torch.all(w.grad == 0)
        else:
            leaf = torch.randn(0, 5, device=DEVICE, requires_grad=True)
            z = leaf * 1.0 if path == "inplace" else leaf
            out = fused_anl.anl_ce(z, t, reduction=reduction, backend=backend,
                                   inplace_backward=path == "inplace")
            out.sum().backward()
            assert leaf.grad.shape == (0, 5)
    torch.testing.assert_close(out, expected.to(out.dtype), equal_nan=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("w", [[-3.0, 1.0, 1.0], [-1.0, 1.0, 1.0], [0.0, 2.0, 0.0]])
def test_weight_sums_as_torch(backend, w):
    """Negative or zero weight sums divide exactly as F.cross_entropy (inf/NaN included),
    on every backend and in the reference."""
    x = torch.tensor([[0.5, -1, 2], [1, 0, -0.5]], device=DEVICE, requires_grad=True)
    t = torch.tensor([0, 2], device=DEVICE)
    w = torch.tensor(w, device=DEVICE)
    expected = F.cross_entropy(x, t, weight=w)
    for fn in (lambda: fused_anl.ce(x, t, weight=w, backend=backend),
               lambda: fused_anl.reference.ce(x, t, weight=w)):
        torch.testing.assert_close(fn(), expected, equal_nan=True)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_second_derivative_raises_without_double_backward(backend):
    z = torch.randn(5, 7, device=DEVICE, requires_grad=True)
    t = torch.randint(0, 7, (5,), device=DEVICE)
    (g,) = torch.autograd.grad(fused_anl.anl_ce(z, t, backend=backend), z, create_graph=True)
    with pytest.raises(RuntimeError, match="double_backward=True"):
        (g ** 2).sum().backward()
    # create_graph=True without differentiating the gradient is fine and exact
    (g2,) = torch.autograd.grad(fused_anl.anl_ce(z, t, backend=backend), z, create_graph=True)
    (gr,) = torch.autograd.grad(fused_anl.reference.anl_ce(z, t), z)
    torch.testing.assert_close(g2.detach(), gr, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", ["anl_ce", "anl_fl", "nce_rce", "gce"])
def test_gradient_penalty_with_double_backward_is_exact(backend, name):
    """d/dW |d loss/d h|^2 in a small model, as PyTorch's own losses give it."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    t = torch.randint(0, 9, (6,), generator=g).to(DEVICE)

    def penalty(loss_fn):
        (gh,) = torch.autograd.grad(loss_fn(h @ w.t(), t), h, create_graph=True)
        (gw,) = torch.autograd.grad((gh ** 2).sum(), w)
        return gw

    fused = penalty(lambda z, y: getattr(fused_anl, name)(z, y, backend=backend,
                                                          double_backward=True))
    ref = penalty(getattr(fused_anl.reference, name))
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_use_of_overwritten_logits_raises(backend):
    w = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    t = torch.randint(0, 6, (4,), device=DEVICE)
    z = w * 1.0
    loss = fused_anl.anl_ce(z, t, inplace_backward=True, backend=backend) + (z ** 2).sum()
    with pytest.raises(RuntimeError, match="overwrote its logits"):
        loss.backward()
    # a use before the call is caught by autograd's version counter
    z = w * 1.0
    sq = (z ** 2).sum()
    loss = fused_anl.anl_ce(z, t, inplace_backward=True, backend=backend) + sq
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # the plain use is exact
    z = w * 1.0
    fused_anl.anl_ce(z, t, inplace_backward=True, backend=backend).backward()
    (ref,) = torch.autograd.grad(fused_anl.reference.anl_ce(w, t), w)
    torch.testing.assert_close(w.grad, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", ["anl_ce", "nfl_rce"])
def test_torch_func_transforms(backend, name):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64).to(DEVICE)
    zb = torch.randn(3, 5, 7, generator=g, dtype=torch.float64).to(DEVICE)
    t = torch.randint(0, 7, (5,), generator=g).to(DEVICE)
    tb = torch.randint(0, 7, (3, 5), generator=g).to(DEVICE)

    def f(x, y=t):
        return getattr(fused_anl, name)(x, y, backend=backend)

    def r(x, y=t):
        return getattr(fused_anl.reference, name)(x, y)

    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.func.grad(f)(z), torch.func.grad(r)(z), **tol)
    torch.testing.assert_close(torch.func.jacrev(f)(z), torch.func.jacrev(r)(z), **tol)
    torch.testing.assert_close(torch.vmap(f)(zb, tb), torch.vmap(r)(zb, tb), **tol)
    torch.testing.assert_close(torch.vmap(torch.func.grad(f))(zb, tb),
                               torch.vmap(torch.func.grad(r))(zb, tb), **tol)
    torch.testing.assert_close(torch.vmap(f, in_dims=(0, None))(zb, t),
                               torch.vmap(r, in_dims=(0, None))(zb, t), **tol)


@pytest.mark.parametrize("path", list(PATHS))
def test_sliced_labels_load_correctly(path):
    """An int64 label pointer 8 bytes past a 16-byte boundary (target[1:])."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(7, 37, generator=g, dtype=torch.float64).to(DEVICE)
    tt = torch.randint(0, 37, (8,), generator=g).to(DEVICE)
    t = tt[1:]
    assert t.data_ptr() % 16 == 8
    with launch.config(**PATHS[path]):
        v, gr = loss_and_grad(fused_anl.anl_ce, z, t, backend="triton", reduction="none")
    assert_close_to_reference("anl_ce", z, t, value=v, grad=gr, reduction="none")


@pytest.mark.skipif(not INTERPRETING,  # on a GPU the kernels are compiled, not interpreted
                    reason="counts the interpreter's memory operations (on a GPU the kernels are compiled)")
@pytest.mark.parametrize("reduction,go,writes", [("mean", 1.0, False), ("sum", 1.0, False),
                                                  ("mean", 2.5, True), ("none", None, True)])
def test_backward_with_unit_grad_output_touches_no_gradient_memory(monkeypatch, reduction, go,
                                                                   writes):
    """loss.backward() (grad_output exactly 1): the backward kernel reads the scalar and
    returns; the stored N x K gradient is neither loaded nor stored. Other grad_outputs
    cost one pass."""
    from triton.runtime import interpreter
    counts = {"load": 0, "store": 0}
    orig_load = interpreter.InterpreterBuilder.create_masked_load
    orig_store = interpreter.InterpreterBuilder.create_masked_store

    def load(self, ptrs, *a, **k):  # elements loaded (the scalar grad_output is one)
        counts["load"] += ptrs.data.size - 1
        return orig_load(self, ptrs, *a, **k)

    def store(self, ptrs, *a, **k):
        counts["store"] += ptrs.data.size
        return orig_store(self, ptrs, *a, **k)

    z = torch.randn(6, 11, requires_grad=True)
    t = torch.randint(0, 11, (6,))
    out = fused_anl.anl_ce(z, t, reduction=reduction, backend="triton")
    # the scalar lives on the device as the kernel sees it: a CPU tensor would be read on
    # the host, so pass it through the Triton path explicitly
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", load)
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_store", store)
    grad_out = torch.rand(6) if go is None else torch.tensor(go)
    from fused_anl import _ops
    monkeypatch.setattr(_ops, "_host_scalar_ok", lambda go: False)
    out.backward(grad_out)
    assert (counts["store"] > 0) == writes, counts
    assert (counts["load"] > 0) == writes, counts
    monkeypatch.undo()
    (ref,) = torch.autograd.grad(fused_anl.reference.anl_ce(z, t, reduction=reduction), z,
                                 grad_out)
    torch.testing.assert_close(z.grad, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_loss_second_derivative_raises(reduction):
    h = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    w = torch.randn(6, 3, device=DEVICE, requires_grad=True)
    t = torch.randint(0, 6, (4,), device=DEVICE)
    out = fused_anl.linear_loss("anl_ce", h, w, t, reduction=reduction)
    (gh,) = torch.autograd.grad(out.sum(), h, create_graph=True)
    with pytest.raises(RuntimeError, match="double_backward=True"):
        (gh ** 2).sum().backward()


def test_linear_loss_nan_row():
    h = torch.randn(4, 3, device=DEVICE)
    h[1, 0] = float("nan")
    w = torch.randn(6, 3, device=DEVICE)
    t = torch.randint(0, 6, (4,), device=DEVICE)
    hr, wr = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = fused_anl.linear_loss("anl_ce", hr, wr, t, reduction="none", chunk_size=2)
    out.sum().backward()
    ref = fused_anl.reference.anl_ce(h @ w.t(), t, reduction="none")
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[1])
    assert torch.isnan(hr.grad[1]).all() and torch.isfinite(hr.grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("path", list(PATHS))
def test_ignored_rows_with_nan_logits_have_zero_loss_and_gradient(backend, path):
    """An ignored sample takes no part, whatever its logits (padding positions often hold
    garbage): loss 0 and gradient exactly 0, on every backend and in the reference."""
    z = torch.randn(4, 37, device=DEVICE)
    z[1, 3] = float("nan")
    z[2, 5] = float("inf")
    t = torch.tensor([1, -100, -100, 7], device=DEVICE)
    with launch.config(**PATHS[path]):
        for reduction in ("mean", "none"):
            v, g, go = _fused("anl_ce", z, t, backend, reduction)
            rv, rg = _reference("anl_ce", z, t, go, reduction)
            assert torch.isfinite(v).all() and torch.isfinite(g).all()
            assert torch.all(g[1:3] == 0) and torch.all(rg[1:3] == 0)
            torch.testing.assert_close(v, rv, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
