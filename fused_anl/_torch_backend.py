"""Analytic PyTorch backend: the kernels' algorithm in torch ops, for any device.

Same row statistics and closed-form gradient as the Triton kernels (the derivation
is in kernels/_terms.py), computed on chunks of rows so that the extra memory is a
few ``chunk x K`` buffers however large ``N x K`` is, and no autograd graph of
K-sized intermediates is ever built.

Per chunk the log-probabilities come from one ``torch.log_softmax`` written straight
into the gradient rows (when they are float32/float64 and contiguous), the
probabilities from an in-place ``exp_``, and the gradient
``c1 [j == y] + c2 p_j + c3a ea_j + c3b eb_j`` from one ``addcmul`` per term, with the
row scale (class weight / mean denominator) folded into the row coefficients: a few
passes over a cache-resident chunk per loss. Few, large ops, which matters on a CPU
shared with other work (every op is a parallel region). Plain cross entropy has its own
routine, :func:`_ce_rows` (one ``torch.softmax`` into the gradient rows and one in-place
multiply by the row scale), with the same rows, gradient and non-finite rule.

Non-finite logits: ``-inf`` is an absent class (docs/semantics.md). A NaN or ``+inf`` anywhere in a
row makes ``log_softmax`` of that row NaN everywhere; :func:`_poison` (the one place,
for every loss and every path) then makes that row's loss and its whole gradient row
NaN, where some terms' clamps and ``where`` would otherwise drop the NaN (an ignored
row: loss and gradient 0, whatever its logits).
"""
from __future__ import annotations

import torch

from . import _torch_terms as _U
from .kernels import _codes as _C
from ._checks import compute_dtype
from .kernels._codes import A_CE, P_NONE

# Elements (rows x K) per chunk: 2^22 float32 = 16 MiB per buffer, a few buffers of
# temporaries per call however large N x K is. Measured on the 2-core development machine
# (fwd+bwd, fp32, N = 4096; benchmarks/cpu_chunks.py, 2026-12-02, interleaved medians, load
# 1.3-2.1): with 2 threads at K = 1000, 2^22 halved the time of 2^20 (ce 73 vs 148 ms,
# nce 89 vs 201, anl_ce 165 vs 402) and 2^24 gained little more (ce 64); at K = 32768 the
# three sizes were within 3% (ce 818-846 ms, F.cross_entropy 1201). With 1 thread at
# K = 1000, 2^22 was on par or better except NFL (149 vs 71 ms): the shared machine's
# noise is of that order, so the choice is the one that wins on the common losses.
CHUNK_ELEMENTS = 1 << 22

_NEG_INF = float("-inf")
_NAN = float("nan")


# --- the terms: units in fused_anl/_torch_terms.py (twins of kernels/_terms.py) ----------
PRESENT = _U.PRESENT


def _elementwise(L, P, present, ys, in_range, h, active, passive, exact, need_sums=True):
    """(sums, ea, eb) of a chunk from its log-probabilities ``L`` and probabilities ``P``.

    ``present``: None when the chunk has no absent class, else the mask ``z > -inf``.
    ``sums``: the five stats2 row sums ``[A1, EA, B1, EB, BC]`` (zeros for a term that
    needs none; None without ``need_sums``). ``L`` is only read; ``P`` may be None for
    terms that do not need it. ``ea``/``eb``: the active/passive terms' elementwise
    factors of the gradient (None: no such factor; ``PRESENT``: 1 on every present class).
    """
    sums = [None] * 5
    ea = eb = None
    unit = _U.ACTIVE[active][0]
    if unit is not None:
        ea, sums[0], sums[1] = unit(L, P, present, h, exact, need_sums)
    unit = _U.PASSIVE[passive][0]
    if unit is not None:
        eb, sums[2], sums[3], sums[4] = unit(L, P, present, ys, in_range, h, exact, need_sums)
    if not need_sums:
        return None, ea, eb
    zero = L.new_zeros(L.shape[0])
    return [zero if x is None else x for x in sums], ea, eb


def _epilogue(ly, c, S, A1, EA, B1, EB, BC, h, active, passive, exact, lse=None):
    """Per-row (L, c1, c2a, c2b, c3a, c3b) from l_y and the row sums; mirrors
    kernels/_terms.py epilogue(), z-loss included (``lse``: needed when it is on)."""
    py = torch.exp(ly)
    zero = torch.zeros_like(ly)
    La, k1a, k2a, k3a = zero, zero, zero, zero
    unit = _U.ACTIVE[active][1]
    if unit is not None:
        La, k1a, k2a, k3a = unit(ly, py, c, S, A1, EA, h, exact)
    Lb, k1b, k2b, k3b = zero, zero, zero, zero
    unit = _U.PASSIVE[passive][1]
    if unit is not None:
        Lb, k1b, k2b, k3b = unit(ly, py, c, B1, EB, BC, h, exact)
        if _C.PASSIVE_TERMS[passive].p_select:
            # its c3 is p's coefficient on its set (kernels/_codes.py p_select); this
            # backend's e is p there, weighted by the difference of the two
            k3b = k3b - k2b
    al, be = h["alpha"], h["beta"]
    L, c2a = al * La + be * Lb, al * k2a
    zl = h["z_loss"]
    if zl:  # zl lse^2 (with the LS term's label weight BC): d/dz_j = 2 zl lse p_j
        zs = zl * BC if passive == _C.P_LS else zl
        L = L + zs * lse * lse
        c2a = c2a + 2.0 * zs * lse
    return L, al * k1a + be * k1b, c2a, be * k2b, al * k3a, be * k3b


def _gradient(G, P, present, ea, eb, ys, in_range, c1, c2, c3a, c3b):
    """Write ``c1 [j == y] + c2 p_j + c3a ea_j + c3b eb_j`` into ``G`` (which may be ``P``)."""
    col = lambda x: x[:, None]  # noqa: E731
    if ea is PRESENT:
        torch.addcmul(col(c3a), P, col(c2), out=G)
        if present is not None:
            G.masked_fill_(present.logical_not(), 0.0)
    else:
        torch.mul(P, col(c2), out=G)
        if ea is not None:
            G.addcmul_(ea, col(c3a))
    if eb is not None:
        G.addcmul_(eb, col(c3b))
    G.scatter_add_(1, torch.where(in_range, ys, 0)[:, None],
                   torch.where(in_range, c1, 0.0)[:, None])
    return G


def _bad_rows(L):
    """Rows whose log-probabilities are NaN: a NaN or +inf logit makes log_softmax NaN on
    the whole row (checked on the first column, before L is overwritten)."""
    if L.shape[1] == 0:
        return torch.zeros(L.shape[0], dtype=torch.bool, device=L.device)
    return torch.isnan(L[:, 0])


def _poison(loss, G, bad_row, ly, valid):
    """The non-finite rule, in one place for every loss and path: a counted row with a NaN
    or +inf logit (``bad_row``) gets a NaN loss and a NaN gradient row; so does a counted
    row whose label logit is unusable (absent class, or a label outside [0, K): ``ly`` is
    NaN). Some terms' clamps and ``where`` would otherwise drop the NaN (GCE, AGCE, AUL).
    An ignored row takes no part whatever its logits: loss 0 and gradient exactly 0 (the
    Triton kernels and the reference do the same; F.cross_entropy's gradient is NaN there)."""
    bad_loss = valid & (bad_row | torch.isnan(ly))
    loss.masked_fill_(bad_loss, _NAN)
    if G is not None and bool((bad_row | bad_loss).any()):
        G.masked_fill_(bad_loss[:, None], _NAN)
        G.masked_fill_((bad_row & ~valid)[:, None], 0.0)
    return loss


def _rows(L, ys, in_range, valid, wy, scale, ly, S, c, sums, present, hv, active, passive, exact,
          compute_grad, G, lse=None):
    """Shared tail: loss rows and, into ``G`` (which may hold ``L`` itself: it is then
    overwritten), the scaled gradient rows.

    ``sums``: the five stats2 row sums, or None to sum this chunk's own elements."""
    bad_row = _bad_rows(L)
    P = torch.exp(L) if _U.needs(active, passive, "p") else None
    sums_, ea, eb = _elementwise(L, P, present, ys, in_range, hv, active, passive, exact,
                                 need_sums=sums is None)
    if sums is None:
        sums = sums_
    Lr, c1, c2a, c2b, c3a, c3b = _epilogue(ly, c, S, *sums, hv, active, passive, exact, lse)
    loss = torch.where(valid, Lr * wy, 0.0)
    if not compute_grad:
        return _poison(loss, None, bad_row, ly, valid), None
    if P is None:
        P = torch.exp(L, out=G)  # L is not needed any more
    # the row scale folded into the row coefficients (an ignored row: all 0, even where
    # its coefficients are NaN)
    sc = lambda x: torch.where(valid, x * scale, 0.0)  # noqa: E731
    G = _gradient(G, P, present, ea, eb, ys, in_range, sc(c1), sc(c2a + c2b), sc(c3a), sc(c3b))
    return _poison(loss, G, bad_row, ly, valid), G


def _row_chunks(z3, step_rows=None):
    """Yield (n0, n1, z): chunks of rows, each as a (rows, K) compute-dtype matrix."""
    n, k, d = z3.shape
    cdt = compute_dtype(z3.dtype)
    step = step_rows or _step_rows(k * d)
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        yield n0, n1, z3[n0:n1].to(cdt).permute(0, 2, 1).reshape(-1, k)


def _step_rows(row_elements):
    return max(2, CHUNK_ELEMENTS // max(1, row_elements))


def _stats1(z):
    """Per row: safe max (0 for an all-absent row), sum exp(z - max), sum (z - max), #present."""
    present = z > _NEG_INF
    m = z.amax(1)
    ms = torch.where(m > _NEG_INF, m, torch.zeros_like(m))
    s = torch.exp(z - ms[:, None]).sum(1)
    d = torch.where(present, z - ms[:, None], torch.zeros((), dtype=z.dtype, device=z.device)).sum(1)
    return ms, s, d, present.sum(1).to(z.dtype)


def merge_stats1(parts):
    """Combine stats1 partials (rows, P, 4) = (max, s, d, c) into one (ms, s, d, c) per row."""
    pm, ps, pd, pc = parts.unbind(-1)
    m = pm.amax(1)
    ms = torch.where(m > _NEG_INF, m, torch.zeros_like(m))
    pms = torch.where(pm > _NEG_INF, pm, ms[:, None])
    return ms, (ps * torch.exp(pms - ms[:, None])).sum(1), (pd + pc * (pms - ms[:, None])).sum(1), pc.sum(1)


def _finish(z, y, in_range, valid, zy, wy, scale, ms, log_s, c, dsum, sums, hv, active, passive,
            exact, compute_grad):
    """Per-row (weighted) loss and, if asked, the scaled gradient rows, from stats1.

    ``sums``: the five stats2 row sums, or None to sum this chunk's own elements.
    ``y`` may lie outside [0, K) (class-parallel: the label is on another shard); the
    ``[j == y]`` term then lives on that shard.
    """
    L = torch.sub(z, ms[:, None]).sub_(log_s[:, None])
    present = z > _NEG_INF
    S = dsum - c * log_s  # NCE's normalizer, sum_k l_k
    ly = (zy - ms) - log_s
    return _rows(L, y, in_range, valid, wy, scale, ly, S, c, sums, present, hv, active, passive,
                 exact, compute_grad, L, lse=ms + log_s)


def stats2_sums(z, y, in_range, ms, log_s, hv, active, passive, exact):
    """The five stats2 row sums (rows, 5) of a chunk (zeros for terms that need none)."""
    L = torch.sub(z, ms[:, None]).sub_(log_s[:, None])
    P = torch.exp(L)
    sums, _, _ = _elementwise(L, P, z > _NEG_INF, y, in_range, hv, active, passive, exact)
    return torch.stack(sums, 1)


def _chunk_stats(z, L, active, passive):
    """NCE's normalizer ``S = sum_k l_k`` over present classes and the count ``c`` (None
    for losses that need neither), and the present mask (None when nothing in the chunk
    is absent). A row with an absent class sums to -inf: only then is the mask built."""
    if not _U.needs(active, passive, "row_stats"):
        return None, None, None
    S = L.sum(1)
    k = L.shape[1]
    if not bool((S == _NEG_INF).any()):
        return S, torch.full_like(S, float(k)), None
    present = z > _NEG_INF
    return torch.where(present, L, 0.0).sum(1), present.sum(1).to(L.dtype), present


def softcap(z, cap):
    """``cap * tanh(z / cap)``; ``-inf`` stays ``-inf`` (absent), ``+inf`` becomes NaN (a
    non-finite logit poisons its row, as without a cap). A new tensor."""
    zc = torch.tanh(z / cap).mul_(cap)
    zc.masked_fill_(z == float("inf"), _NAN)
    return zc.masked_fill_(z == _NEG_INF, _NEG_INF)


def row_loss(z3, target, weight, hv, den, *, active, passive, exact, ignore_index,
             compute_grad, grad_dtype=None, out=None, lse_out=None):
    """Same contract as kernels.launch.row_loss (hv: dict of double constants; with
    ``hv["ls_weight"]``, the class weights of the label-smoothing term).

    ``out`` may be ``z3`` itself: each chunk is read completely before its gradient
    is written back. ``lse_out``: an (N*D,) buffer for each row's lse (0 on ignored rows).
    ``hv["softcap"]`` > 0: the logits are capped first (:func:`softcap`) and the gradient
    is that with respect to the uncapped logits, ``dz'/dz = 1 - (z'/cap)^2``.
    """
    cap = hv.get("softcap", 0.0)
    want_lse = lse_out is not None or hv.get("z_loss", 0.0) != 0
    n, k, d = z3.shape
    cdt = compute_dtype(z3.dtype)
    dev = z3.device
    loss = torch.empty(n * d, dtype=cdt, device=dev)
    grad = None
    if compute_grad:
        grad = out if out is not None else torch.empty((n, k, d), dtype=grad_dtype or z3.dtype,
                                                       device=dev)
    if n * d == 0:
        return loss, grad
    if k == 0:
        raise ValueError("fused_anl: logits with 0 classes")
    # log_softmax can write the gradient rows directly when they are (rows, K) compute-dtype
    # rows that do not alias the logits; otherwise a chunk-sized scratch buffer is used
    direct = (compute_grad and d == 1 and grad.dtype == cdt and grad.is_contiguous()
              and (cap or not _overlaps(grad, z3)))
    w = weight.to(cdt) if weight is not None else None
    inv_den = (1.0 / den.to(cdt)) if den is not None else None
    step = _step_rows(k * d)
    scratch = None
    for n0, n1, z in _row_chunks(z3, step):
        rows = z.shape[0]
        t = target[n0 * d:n1 * d].long()
        valid = t != ignore_index
        in_range = (t >= 0) & (t < k)
        ys = torch.where(in_range, t, 0)
        if cap:
            z = softcap(z, cap)  # a new chunk: the gradient rows may then alias the logits
        zy = z.gather(1, ys[:, None])[:, 0]
        lse = torch.logsumexp(z, 1) if want_lse else None
        if lse_out is not None:
            lse_out[n0 * d:n1 * d] = torch.where(valid, lse, 0.0)
        if direct:
            G = grad[n0:n1].view(rows, k)
        else:
            if scratch is None:
                scratch = torch.empty((min(n * d, step * d), k), dtype=cdt, device=dev)
            G = scratch[:rows]
        if active == A_CE and passive == P_NONE and not cap and not hv.get("z_loss", 0.0):
            # plain cross entropy (no option that changes its rows): its own routine
            lr, g = _ce_rows(z, G, ys, in_range, valid, zy, w, inv_den, hv["alpha"],
                             compute_grad)
            loss[n0 * d:n1 * d] = lr
            if compute_grad and not direct:
                grad[n0:n1] = g.reshape(n1 - n0, d, k).permute(0, 2, 1)
            continue
        L = torch.log_softmax(z, 1, out=G)
        S, c, present = _chunk_stats(z, L, active, passive)
        ly = L.gather(1, ys[:, None])[:, 0]
        ly = torch.where(in_range & (zy > _NEG_INF), ly, _NAN)
        wy = w[ys] if w is not None else torch.ones_like(ly)
        scale = wy * inv_den if inv_den is not None else wy
        lr, g = _rows(L, ys, in_range, valid, wy, scale, ly, S, c, None, present, hv, active,
                      passive, exact, compute_grad, G, lse)
        if compute_grad and cap:  # chain rule through the cap (0 where absent or ignored)
            t_ = z / cap
            g.mul_(torch.where(valid[:, None] & (z != _NEG_INF), 1.0 - t_ * t_, 0.0))
        loss[n0 * d:n1 * d] = lr
        if compute_grad and not direct:
            grad[n0:n1] = g.reshape(n1 - n0, d, k).permute(0, 2, 1)
    return loss, grad


def _ce_rows(z, G, ys, in_range, valid, zy, w, inv_den, alpha, compute_grad):
    """Plain cross entropy on a chunk: (loss rows, scaled gradient rows written into ``G``).

    The same rows and the same gradient as the general path (``_rows`` with the CE
    epilogue: c1 = -alpha, c2 = alpha, then :func:`_poison`), in fewer passes over the
    chunk: one ``torch.softmax`` written straight into ``G`` (the probabilities, more
    accurate than ``exp(log_softmax)``), one in-place multiply by the row scale, and a
    scatter of ``-scale`` on the label column. The label's log-probability is
    ``log(p_y)``, as accurate as ``z_y - lse`` wherever ``p_y`` is a normal float; the
    rare rows where it is not (``p_y`` below the dtype's smallest normal: underflow, an
    absent label class) take ``log_softmax`` of those rows alone. A NaN or ``+inf``
    logit, or a row with no present class, makes the whole softmax row NaN, as it makes
    the whole ``log_softmax`` row NaN: :func:`_poison` reads the same first column.
    """
    P = torch.softmax(z, 1, out=G)
    bad_row = _bad_rows(P)
    col = ys[:, None]
    py = P.gather(1, col)[:, 0]
    ly = torch.log(py)
    low = py < torch.finfo(P.dtype).tiny  # False for NaN
    if bool(low.any()):
        r = low.nonzero()[:, 0]
        ly[r] = torch.log_softmax(z[r], 1).gather(1, col[r])[:, 0]
    ly = torch.where(in_range & (zy > _NEG_INF), ly, _NAN)
    wy = w[ys] if w is not None else None
    # the general path's loss: where(valid, (alpha * -ly + beta * 0) * wy, 0)
    lr = (-ly) * alpha if alpha != 1.0 else -ly
    if wy is not None:
        lr = lr * wy
    loss = torch.where(valid, lr, 0.0)
    if not compute_grad:
        return _poison(loss, None, bad_row, ly, valid), None
    scale = wy if wy is not None else torch.ones_like(ly)
    if inv_den is not None:
        scale = scale * inv_den
    s = torch.where(valid, alpha * scale, 0.0)  # c2 = alpha (an ignored row: 0)
    P.mul_(s[:, None])
    P.scatter_add_(1, col, torch.where(in_range, -s, 0.0)[:, None])  # c1 = -alpha
    return _poison(loss, P, bad_row, ly, valid), P


def _overlaps(a, b):
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() == sb.data_ptr()


# ------------------------------------------------ class-parallel shards (as kernels/launch.py)


def shard_stats1(z3):
    """(rows, 1, STATS1) stats1 (max, sum exp, sum (z - max), #present) of the local shard
    (max -inf for a row with no present class on this shard)."""
    n, k, d = z3.shape
    cdt = compute_dtype(z3.dtype)
    parts = [torch.empty((0, 4), dtype=cdt, device=z3.device)]
    for _, _, z in _row_chunks(z3):
        ms, s, dsum, c = _stats1(z)
        parts.append(torch.stack([torch.where(c > 0, ms, _NEG_INF), s, dsum, c], 1))
    return torch.cat(parts)[:, None, :]


def shard_stats2(z3, y_local, hv, parts1, *, active, passive, exact):
    """(rows, 1, STATS2) stats2 sums of the local shard, given all ranks' stats1."""
    n, k, d = z3.shape
    ms, s, _, _ = merge_stats1(parts1)
    part2 = torch.zeros((n * d, 1, 5), dtype=parts1.dtype, device=z3.device)
    for n0, n1, z in _row_chunks(z3):
        r = slice(n0 * d, n1 * d)
        y = y_local[r]
        part2[r, 0] = stats2_sums(z, y, (y >= 0) & (y < k), ms[r], torch.log(s[r]), hv, active,
                                  passive, exact)
    return part2


def shard_finish(z3, y_local, row_weight, zy, hv, den, parts1, parts2, *, active, passive,
                 exact, ignore_index, compute_grad):
    """Per-row loss and this shard's gradient columns from the combined statistics
    (``zy``: the label logit, gathered from the rank that holds it; -inf: none does)."""
    n, k, d = z3.shape
    cdt = parts1.dtype
    ms, s, dsum, c = merge_stats1(parts1)
    log_s = torch.log(s)
    valid = y_local != ignore_index
    zy = torch.where(zy > _NEG_INF, zy, _NAN)
    scale = row_weight / den.to(cdt) if den is not None else row_weight
    loss = torch.empty(n * d, dtype=cdt, device=z3.device)
    grad = torch.empty((n, k, d), dtype=z3.dtype, device=z3.device) if compute_grad else None
    for n0, n1, z in _row_chunks(z3):
        r = slice(n0 * d, n1 * d)
        y = y_local[r]
        lr, g = _finish(z, y, (y >= 0) & (y < k), valid[r], zy[r], row_weight[r], scale[r], ms[r],
                        log_s[r], c[r], dsum[r], list(parts2[r, 0].unbind(1)), hv, active, passive,
                        exact, compute_grad)
        loss[r] = lr
        if compute_grad:
            grad[n0:n1] = g.reshape(n1 - n0, d, k).permute(0, 2, 1)
    return loss, grad


def scale_(grad, grad_output):
    """``grad *= grad_output`` in place: a 1-element tensor, or one value per sample."""
    n, k, d = grad.shape
    cdt = compute_dtype(grad.dtype)
    if grad_output.numel() == 1:
        grad.mul_(grad_output.reshape(()).to(cdt))
    else:
        grad.mul_(grad_output.reshape(n, 1, d).to(cdt))
    return grad
