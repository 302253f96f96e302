"""The batch entropy term of ANL-CE-ER (fused_anl/batch_entropy.py) against the published
``ANL_CE_ER.entropy_reg`` evaluated in float64 and differentiated by autograd
(``published_entropy``, written from the definition in tests/dist_worker_entropy.py).

Error model for the bounds of the low-precision tests (compared with the float64
reference on the *same* input values; ``eps`` is the compute dtype's unit roundoff,
2^-24 for float32, 2^-53 for float64):

- a probability that is not clamped (``p >= p_min``) is ``exp(x) / s`` with
  ``|x| <= |log p_min|``: relative error ``dp <= (|log p_min| + K + 2) eps`` (the rounding
  of ``x`` amplified by exp, the K-term sum ``s``, the division); a clamped one is exact;
- ``C_k`` sums N positive values in chunks, ``T`` sums K of them, ``u = C / T``:
  ``du <= 2 dp + (2N + K + 3) eps`` relative;
- ``E = log K + sum_k q_k log q_k``: ``|dE| <= du sum_k q_k |log q_k + 1| +
  (K + 2) eps (log K + sum_k |q_k log q_k|)``;
- ``G_j = (g_j - S) / T`` with ``g_j = log q_j + 1``, ``S = sum_k u_k g_k``:
  ``|dG| <= [du (2 + sum u|g|) + (K + 2) eps (max|g| + sum u|g|)] / T + max|G| du``, plus a
  clamp mask that rounding can flip where ``u_k`` or ``p`` lies within its rounding error
  of a bound (added only then): ``p_min |log p_min + 1| / T`` for the share mask,
  ``p_min max|G|`` for the probability mask;
- the gradient ``p (W - R)`` (``W = where(m, G, 0)``, ``R = sum W p``, ``p <= 1``):
  ``|dgrad| <= 2 (|dG| + max|G| (2 dp + K eps))``, then one rounding to the logits' dtype:
  ``2^-8 |grad|`` for bfloat16, ``2^-11 |grad|`` for float16 (plus its subnormal spacing
  2^-24), none for float32.

All bounds get a factor 2 for the library's exp and log (within a few ulp, not 0.5).
The float64 comparisons use the same model with ``eps = 2^-53``.
"""
import math
import multiprocessing
import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

import fused_anl.batch_entropy as BE
from fused_anl.batch_entropy import batch_entropy

import dist_worker_entropy
from dist_worker_entropy import published_entropy

multiprocessing.set_forkserver_preload(["torch", "fused_anl", "dist_worker_entropy"])

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}
OUT_ROUNDING = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 2.0**-8,
                torch.float16: 2.0**-11}
OUT_FLOOR = {torch.float16: 2.0**-24}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 64 elements: every test crosses several chunks in forward and backward."""
    monkeypatch.setattr(BE, "CHUNK_ELEMENTS", 64)


def make_batch(n, k, seed, dtype=torch.float64):
    """Random logits with the edge cases in the first rows (float64 values representable
    in ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, k, (n,), generator=g)
    z[:, 1] -= 40.0                         # class 1: batch share below p_min, clamped
    z[:, k - 2] = float("-inf")             # a class absent in every row
    t[(t == 1) | (t == k - 2)] = 0
    z[0, t[0]] += 30.0                      # confident: p_y above 1 - p_min
    z[1, 2] = z[1].max() + 15.0             # p of class 2 a little below 1 - p_min
    z[2] *= 10.0                            # many p below p_min
    t[3] = -100                             # ignored rows
    t[4] = -100
    z[5, : k // 3] = float("-inf")          # padding
    t[5] = k - 1
    return z.to(dtype).to(torch.float64), t


def reference(z64, t, p_min=1e-7):
    """E and its gradient by autograd of the published formula (float64)."""
    x = z64.clone().requires_grad_(True)
    e = published_entropy(x, t, p_min)
    e.backward()
    return e.detach(), x.grad


def fused(z, t, **kw):
    x = z.clone().requires_grad_(True)
    e = batch_entropy(x, t, **kw)
    e.backward()
    return e.detach(), x.grad


def bounds(z64, t, cdt, p_min=1e-7):
    """(tolerance on E, absolute tolerance on the gradient) of the module's error model."""
    eps = UNIT_ROUNDOFF[cdt]
    k = z64.shape[1]
    rows = z64.movedim(1, -1).reshape(-1, k)[t.reshape(-1) != -100]
    n = rows.shape[0]
    P = torch.softmax(rows, 1).clamp(p_min, 1 - p_min)
    C = P.sum(0)
    T = float(C.sum())
    u = C / T
    q = u.clamp(p_min, 1 - p_min)
    g = torch.where((u >= p_min) & (u <= 1 - p_min), q.log() + 1, 0.0)
    G = (g - (u * g).sum()) / T
    maxG = float(G.abs().max())
    dp = (abs(math.log(p_min)) + k + 2) * eps
    du = 2 * dp + (2 * n + k + 3) * eps
    tol_e = du * float((q * (q.log() + 1).abs()).sum()) \
        + (k + 2) * eps * (math.log(k) + float((q * q.log()).abs().sum()))
    sug = float((u * g.abs()).sum())
    dG = (du * (2 + sug) + (k + 2) * eps * (float(g.abs().max()) + sug)) / T + maxG * du
    # a clamp mask that rounding can flip: only where a value lies within its rounding
    # error of a bound
    p = torch.softmax(rows, 1)
    if bool(((p - p_min).abs() <= 2 * dp * p_min).any()
            or ((p - (1 - p_min)).abs() <= 2 * dp + eps).any()):
        dG += p_min * maxG
    if bool(((u - p_min).abs() <= 2 * du * p_min).any()
            or ((u - (1 - p_min)).abs() <= 2 * du + eps).any()):
        dG += p_min * abs(math.log(p_min) + 1) / T
    tol_g = 2 * (dG + maxG * (2 * dp + k * eps))
    return 2 * tol_e, 2 * tol_g


def assert_matches(z, t, dtype, p_min=1e-7, **kw):
    z64 = z.to(torch.float64)
    e_ref, g_ref = reference(z64, t, p_min)
    e, g = fused(z.to(dtype), t, p_min=p_min, **kw)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert e.dtype == cdt and e.shape == ()
    assert g.dtype == dtype
    tol_e, tol_g = bounds(z64, t, cdt, p_min)
    torch.testing.assert_close(e.double(), e_ref, rtol=0, atol=tol_e)
    torch.testing.assert_close(g.double(), g_ref, rtol=OUT_ROUNDING[dtype],
                               atol=tol_g + OUT_FLOOR.get(dtype, 0.0))
    return e, g, e_ref, g_ref


# ------------------------------------------------------------------ against the formula


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,k", [(19, 7), (40, 33)])
def test_matches_published_formula_float64(seed, n, k):
    z, t = make_batch(n, k, seed)
    e, g, e_ref, g_ref = assert_matches(z, t, torch.float64)
    # the edge cases are what they claim to be
    p = torch.softmax(z, 1)
    assert p[0, t[0]] > 1 - 1e-7 and 0.99999 < p[1, 2] < 1 - 1e-7
    assert (p[2] < 1e-7).sum() >= 2
    share = p[t != -100].clamp(1e-7, 1 - 1e-7).sum(0)
    assert share[1] / share.sum() < 1e-7
    # absent classes: exactly zero gradient; ignored rows: exactly zero gradient
    assert torch.equal(g[torch.isinf(z)], torch.zeros_like(g[torch.isinf(z)]))
    assert torch.equal(g[3:5], torch.zeros_like(g[3:5]))
    assert g_ref.abs().max() > 0 and torch.isfinite(e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1])
def test_low_precision_within_derived_bounds(dtype, seed):
    z, t = make_batch(48, 21, seed, dtype)
    if dtype == torch.float16:  # float16 overflows beyond 65504: keep the scale-30 row in range
        assert z[torch.isfinite(z)].abs().max() < 6e4
    assert_matches(z, t, dtype)


def test_larger_p_min_many_clamps():
    """p_min = 1e-2: many probabilities and several class shares clamped at both ends."""
    z, t = make_batch(30, 9, 3)
    z[6:12, 4] += 12.0  # class 4 dominates some rows: p above 0.99
    assert_matches(z, t, torch.float64, p_min=1e-2)
    assert_matches(z.float(), t, torch.float32, p_min=1e-2)


def test_trailing_dims_are_rows():
    """(N, K, d1, d2): every position is a row, as for the row losses."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 6, 4, 2, generator=g, dtype=torch.float64) * 4
    t = torch.randint(0, 6, (3, 4, 2), generator=g)
    t[1, 2, 0] = -100
    z[0, :, 1, 1] *= 12
    assert_matches(z, t, torch.float64)
    assert_matches(z.float(), t, torch.float32)


def test_int32_target_and_custom_ignore_index():
    z, t = make_batch(12, 5, 4)
    t[t == -100] = 0
    t[7] = -1
    e, g = fused(z, t.int(), ignore_index=-1)
    keep = t != -1
    e_ref, g_ref = reference(z[keep], t[keep])
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(g[keep], g_ref, rtol=1e-12, atol=1e-16)
    assert torch.equal(g[7], torch.zeros_like(g[7]))


# --------------------------------------------------- the clamps' bounds (torch's rule)


def test_probability_clamp_bound_is_inclusive():
    """torch.clamp passes the gradient at exactly the bound. Rows of equal logits over
    K = 8 classes have p = 1/8 exactly; with p_min = 1/8 each such p sits on the lower
    bound, where the published formula's gradient keeps m = 1."""
    g = torch.Generator().manual_seed(6)
    k, p_min = 8, 0.125
    z = torch.randn(10, k, generator=g, dtype=torch.float64) * 2
    z[2:5] = torch.tensor([0.7, -1.3, 2.0])[:, None].double()  # equal logits per row
    t = torch.randint(0, k, (10,), generator=g)
    assert torch.equal(torch.softmax(z[2:5], 1), torch.full((3, k), 0.125, dtype=torch.float64))
    e, grad = fused(z, t, p_min=p_min)
    e_ref, g_ref = reference(z, t, p_min)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-15)
    torch.testing.assert_close(grad, g_ref, rtol=1e-12, atol=1e-17)
    # the bound matters: with an exclusive mask those rows' gradient would be -p R_n only
    assert (g_ref[2:5] - g_ref[2:5].mean(1, keepdim=True)).abs().max() > 1e-4


def test_share_clamp_bound_is_inclusive():
    """The K-sized step at shares exactly on both bounds (dyadic column sums, T = 1
    exactly), against autograd of the published formula's last two lines."""
    p_min = 2.0**-20
    for C in ([p_min, 0.75 - p_min, 0.25], [p_min / 2, 1 - p_min, p_min / 2],
              [0.5, 0.25, 0.125, 0.125 - p_min, p_min]):
        c = torch.tensor(C, dtype=torch.float64, requires_grad=True)
        assert float(c.detach().sum()) == 1.0
        q = (c / c.sum()).clamp(min=p_min, max=1 - p_min)
        e_ref = math.log(len(C)) + (q * q.log()).sum()
        e_ref.backward()
        with torch.no_grad():
            T = c.sum()
            u, g, qlogq, ug = BE._shares(c.detach(), T, p_min)
            e, G = BE._class_step(c.detach(), T, qlogq, ug, g, math.log(len(C)))
        torch.testing.assert_close(e, e_ref.detach(), rtol=0, atol=1e-15)
        torch.testing.assert_close(G, c.grad, rtol=1e-14, atol=1e-15)
        assert (u == p_min).any() or (u == 1 - p_min).any()


# -------------------------------------------------------------------- special inputs


def test_ignored_rows_take_no_part_whatever_their_logits():
    z, t = make_batch(16, 6, 7)
    z[3, 2] = float("nan")
    z[4, 0] = float("inf")
    e, g = fused(z, t)
    keep = t != -100
    e2, g2 = fused(z[keep], t[keep])
    torch.testing.assert_close(e, e2, rtol=0, atol=1e-15)
    torch.testing.assert_close(g[keep], g2, rtol=1e-12, atol=1e-17)
    assert torch.equal(g[~keep], torch.zeros_like(g[~keep]))


@pytest.mark.parametrize("n", [0, 5])
def test_every_row_ignored_gives_zero(n):
    z = torch.randn(n, 4, dtype=torch.float64)
    t = torch.full((n,), -100)
    e, g = fused(z, t)
    assert e.item() == 0.0 and torch.equal(g, torch.zeros_like(z))
    e32, g32 = fused(z.bfloat16(), t)
    assert e32.dtype == torch.float32 and e32.item() == 0.0
    assert torch.equal(g32, torch.zeros_like(g32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_row_poisons_the_batch(bad):
    """A NaN or +inf logit in a counted row: E is NaN and the gradient NaN exactly where
    autograd of the published formula has it NaN: every counted row but one whose
    probabilities are all clamped; ignored rows keep an exact 0."""
    z, t = make_batch(14, 5, 8)
    z[6, 2] = bad
    e, g = fused(z, t)
    e_ref, g_ref = reference(z, t)
    assert torch.isnan(e) and torch.isnan(e_ref)
    keep = t != -100
    assert torch.equal(torch.isnan(g), torch.isnan(g_ref))
    assert torch.isnan(g[6:]).all()
    # row 0 (confident, every p clamped) keeps 0: torch.clamp's backward drops the NaN
    assert torch.equal(g[0], torch.zeros_like(g[0]))
    assert torch.equal(g[~keep], torch.zeros_like(g[~keep]))
    torch.testing.assert_close(g[~torch.isnan(g_ref)], g_ref[~torch.isnan(g_ref)], rtol=0, atol=0)


# ------------------------------------------------------------------ autograd behaviour


def test_gradcheck_clamps_inactive():
    g = torch.Generator().manual_seed(9)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (7,), generator=g)
    t[2] = -100
    p = torch.softmax(z.detach(), 1)
    assert p.min() > 1e-3 and p.max() < 1 - 1e-3  # neither clamp is active
    assert torch.autograd.gradcheck(lambda x: batch_entropy(x, t), (z,))


def test_gradcheck_clamps_active_away_from_bounds():
    """p_min = 0.05: some probabilities and one class share clamped, none within 1e-4 of a
    bound (gradcheck's finite differences step 1e-6), so the derivative exists."""
    g = torch.Generator().manual_seed(10)
    z = torch.randn(9, 4, generator=g, dtype=torch.float64) * 2
    z[:, 3] -= 6.0
    z[0, 0] += 8.0
    t = torch.randint(0, 4, (9,), generator=g)
    p_min = 0.05
    p = torch.softmax(z, 1)
    share = p.clamp(p_min, 1 - p_min).sum(0)
    share = share / share.sum()
    assert (p < p_min).any() and (p > 1 - p_min).any() and (share < p_min).any()
    assert ((p - p_min).abs().min() > 1e-4 and (p - 1 + p_min).abs().min() > 1e-4
            and (share - p_min).abs().min() > 1e-4)
    x = z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: batch_entropy(x, t, p_min=p_min), (x,))


def test_no_n_by_k_tensor_saved_for_backward():
    """The graph is one node that holds the logits themselves and per-row/per-class
    vectors only (the row max and sum, the ignore mask, G)."""
    z, t = make_batch(40, 12, 11)
    x = z.clone().requires_grad_(True)
    e = batch_entropy(x, t)
    node = e.grad_fn
    assert node.name() == "_BatchEntropyBackward"
    assert [f for f, _ in node.next_functions if f is not None][0].variable is x
    saved = node.saved_tensors
    big = [s for s in saved if s.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert sum(s.numel() for s in saved if s is not big[0]) == 3 * 40 + 12


def test_one_pass_over_the_rows_each_way(monkeypatch):
    """Forward reads every row once (statistics and column sums in the same chunk), backward
    once (R_n and the gradient from the same chunk)."""
    import fused_anl._torch_backend as TB
    z, t = make_batch(30, 7, 16)
    seen = []
    chunks = TB._row_chunks

    def counting(z3, step_rows=None):
        for n0, n1, c in chunks(z3, step_rows):
            seen.append(n1 - n0)
            yield n0, n1, c

    monkeypatch.setattr(TB, "_row_chunks", counting)
    x = z.clone().requires_grad_(True)
    e = batch_entropy(x, t)
    assert sum(seen) == 30 and len(seen) > 1
    seen.clear()
    e.backward()
    assert sum(seen) == 30


def test_grad_output_scales_and_repeated_backward():
    z, t = make_batch(20, 6, 12)
    x = z.clone().requires_grad_(True)
    e = batch_entropy(x, t)
    (g1,) = torch.autograd.grad(e, x, retain_graph=True)
    (g3,) = torch.autograd.grad(e * -2.5, x)
    # grad_output is folded into G, so the roundings differ: within the float64 bound
    torch.testing.assert_close(g3, -2.5 * g1, rtol=0, atol=2.5 * bounds(z, t, torch.float64)[1])


def test_second_derivative_raises():
    """create_graph=True gives the exact first derivative; differentiating it raises (a
    silently zero second derivative, e.g. in a gradient penalty, is refused)."""
    z, t = make_batch(10, 5, 13)
    x = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(batch_entropy(x, t), x, create_graph=True)
    torch.testing.assert_close(g.detach(), reference(z, t)[1], rtol=0,
                               atol=bounds(z, t, torch.float64)[1])
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        (g ** 2).sum().backward()


def test_lse_from_the_caller():
    z, t = make_batch(25, 9, 14)
    lse = torch.logsumexp(z, 1)
    e, g = fused(z, t, lse=lse)
    e_ref, g_ref = reference(z, t)
    tol_e, tol_g = bounds(z, t, torch.float64)
    torch.testing.assert_close(e, e_ref, rtol=0, atol=tol_e)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=tol_g)
    e32, g32 = fused(z.float(), t, lse=lse.float())
    tol_e, tol_g = bounds(z, t, torch.float32)
    torch.testing.assert_close(e32.double(), e_ref, rtol=0, atol=tol_e)
    torch.testing.assert_close(g32.double(), g_ref, rtol=0, atol=tol_g)


def test_bad_arguments_raise():
    z, t = make_batch(6, 4, 15)
    for p_min in (0.0, 0.5, -1e-7, True, "1e-7"):
        with pytest.raises(ValueError, match="p_min"):
            batch_entropy(z, t, p_min=p_min)
    with pytest.raises(ValueError, match="class_start"):
        batch_entropy(z, t, class_start=2)
    with pytest.raises(ValueError, match="lse"):
        batch_entropy(z, t, lse=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="target shape"):
        batch_entropy(z, t[:5])
    with pytest.raises(TypeError, match="logits must be"):
        batch_entropy(z.long(), t)
    with pytest.raises(ValueError, match="labels must lie"):
        batch_entropy(z, torch.full((6,), 4))


# ------------------------------------------------------------------ class-parallel (gloo)


def _spawn_workers(fn, world, *args):
    with tempfile.TemporaryDirectory(prefix="fused_anl_gloo_") as d:
        mp.start_processes(fn, args=(world, os.path.join(d, "store"), *args), nprocs=world,
                           join=True, start_method="forkserver")


def test_class_parallel_two_ranks():
    """Equal and uneven shards, padding on one shard only, a clamped class share, ignored
    rows (one with a NaN), the caller's lse, every row ignored, the collectives counted."""
    _spawn_workers(dist_worker_entropy.run, 2)


def test_class_parallel_dtensor_logits():
    _spawn_workers(dist_worker_entropy.run_dtensor, 2)
