"""Analytic PyTorch backend: the kernels' algorithm in torch ops, for any device.

Same row statistics and closed-form gradient as the Triton kernels (the derivation
is in kernels/_terms.py), computed on chunks of rows so that the extra memory is a
few ``chunk x K`` float32 buffers however large ``N x K`` is, and no autograd graph
of K-sized intermediates is ever built.
"""
from __future__ import annotations

import torch

from . import _registry as R

# Elements (rows x K) per chunk: bounds the temporaries to a few MiB each.
CHUNK_ELEMENTS = 1 << 21


def _pow(x, e):
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny) ** e,
                       torch.ones_like(x) if e == 0 else torch.zeros_like(x))


def _focal_u(l, p, w, gamma, exact):
    """d(w l)/dl with w = (1-p)^gamma: w if w is detached, else w - gamma l p w / (1-p)."""
    if not exact:
        return w
    om = 1.0 - p
    return torch.where(om > 0, w - gamma * l * p * w / torch.where(om > 0, om, 1.0), w)


def _elementwise(z, m, log_s, y, h, active, passive, exact):
    """(a1, ea, b1, eb, bc, p) per element; see kernels/_terms.py elementwise()."""
    present = z > float("-inf")
    l = (z - m[:, None]) - log_s[:, None]
    p = torch.exp(l)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    a1 = ea = b1 = eb = bc = zero
    lpm = h["log_pmin"]
    if active == R.A_NCE:
        ea = present.to(z.dtype)
    elif active == R.A_NFL:
        w = _pow(1.0 - p, h["gamma"])
        a1 = torch.where(present, w * l, zero)
        ea = torch.where(present, _focal_u(l, p, w, h["gamma"], exact), zero)
    if passive == R.P_NNCE:
        b1 = h["A_nnce"] + l.clamp_min(lpm)
        eb = (l >= lpm).to(z.dtype)
    elif passive == R.P_NNFL:
        lc = l.clamp_min(lpm)
        w = _pow(1.0 - torch.exp(lc), h["gamma"])
        b1 = torch.where(l >= lpm, h["A_nnfl"] + w * lc, zero)  # A' - FL_k, 0 where clamped
        eb = torch.where(l >= lpm, _focal_u(l, p, w, h["gamma"], exact), zero)
    elif passive == R.P_RCE:
        cols = torch.arange(z.shape[1], device=z.device)
        other = present & (cols[None, :] != y[:, None])
        b1 = torch.where(other, p.clamp_min(R.P_FLOOR), zero)
        in_q = other & (p >= R.P_FLOOR)
        eb, bc = torch.where(in_q, p, zero), torch.where(in_q, zero, p)
    return a1, ea, b1, eb, bc, p


def _epilogue(m, log_s, c, S, A1, EA, B1, EB, BC, zy, h, active, passive, exact):
    """Per-row (L, c1, c2a, c2b, c3a, c3b); mirrors kernels/_terms.py epilogue()."""
    ly = (zy - m) - log_s
    py = torch.exp(ly)
    zero = torch.zeros_like(ly)
    g, lpm = h["gamma"], h["log_pmin"]
    La, k1a, k2a, k3a = zero, zero, zero, zero
    if active == R.A_CE:
        La, k1a, k2a = -ly, zero - 1.0, zero + 1.0
    elif active == R.A_FL:
        w = _pow(1.0 - py, g)
        u = _focal_u(ly, py, w, g, exact)
        La, k1a, k2a = -w * ly, -u, u
    elif active == R.A_NCE:
        La, k1a = ly / S, 1.0 / S
        k2a, k3a = -1.0 / S + ly * c / S**2, -ly / S**2
    elif active == R.A_NFL:
        wy = _pow(1.0 - py, g)
        uy = _focal_u(ly, py, wy, g, exact)
        num = wy * ly
        La, k1a = num / A1, uy / A1
        k2a, k3a = -uy / A1 + num * EA / A1**2, -num / A1**2
    Lb, k1b, k2b, k3b = zero, zero, zero, zero
    if passive == R.P_NNCE:
        vy = h["A_nnce"] + ly.clamp_min(lpm)
        my = (ly >= lpm).to(ly.dtype)
        Lb, k1b = 1.0 - vy / B1, -my / B1
        k2b, k3b = my / B1 - vy * EB / B1**2, vy / B1**2
    elif passive == R.P_NNFL:
        a_nnfl = h["A_nnfl"]
        lcy = ly.clamp_min(lpm)
        wy = _pow(1.0 - torch.exp(lcy), g)
        uy = torch.where(ly >= lpm, _focal_u(ly, py, wy, g, exact), zero)
        num, den = a_nnfl + wy * lcy, B1
        Lb, k1b = 1.0 - num / den, -uy / den
        k2b, k3b = uy / den - num * EB / den**2, num / den**2
    elif passive == R.P_MAE:
        Lb, k1b, k2b = 1.0 - py, -py, py
    elif passive == R.P_RCE:
        Lb, k3b = R.RCE_A * B1, zero + R.RCE_A
        k2b = -R.RCE_A * torch.where(EB > 0.5, 1.0 - BC, EB)
    elif passive == R.P_GCE:
        q = h["q"]
        pq = _pow(py.clamp_min(R.P_FLOOR), q)
        Lb, k1b = (1.0 - pq) / q, torch.where(py >= R.P_FLOOR, -pq, zero)
        k2b = -k1b
    elif passive in (R.P_AGCE, R.P_AUL):
        q, a = h["q"], h["a"]
        if passive == R.P_AGCE:
            Lb, k1b = (h["C_pass"] - _pow(a + py, q)) / q, -_pow(a + py, q - 1.0) * py
        else:
            Lb, k1b = (_pow(a - py, q) - h["C_pass"]) / q, -_pow(a - py, q - 1.0) * py
        k2b = -k1b
    elif passive == R.P_AEL:
        Lb = torch.exp(-py / h["a"])
        k1b = -Lb / h["a"] * py
        k2b = -k1b
    al, be = h["alpha"], h["beta"]
    return al * La + be * Lb, al * k1a + be * k1b, al * k2a, be * k2b, al * k3a, be * k3b


def _row_chunks(z3, step_rows=None):
    """Yield (n0, n1, z): chunks of rows, each as a (rows, K) compute-dtype matrix."""
    n, k, d = z3.shape
    cdt = torch.float64 if z3.dtype == torch.float64 else torch.float32
    step = step_rows or max(1, CHUNK_ELEMENTS // max(1, k * d))
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        yield n0, n1, z3[n0:n1].to(cdt).permute(0, 2, 1).reshape(-1, k)


def _stats1(z):
    """Per row: safe max (0 for an all-absent row), sum exp(z - max), sum (z - max), #present."""
    present = z > float("-inf")
    m = z.amax(1)
    ms = torch.where(m > float("-inf"), m, torch.zeros_like(m))
    s = torch.exp(z - ms[:, None]).sum(1)
    d = torch.where(present, z - ms[:, None], torch.zeros((), dtype=z.dtype, device=z.device)).sum(1)
    return ms, s, d, present.sum(1).to(z.dtype)


def merge_stats1(parts):
    """Combine stats1 partials (rows, P, 4) = (max, s, d, c) into one (ms, s, d, c) per row."""
    pm, ps, pd, pc = parts.unbind(-1)
    m = pm.amax(1)
    ms = torch.where(m > float("-inf"), m, torch.zeros_like(m))
    pms = torch.where(pm > float("-inf"), pm, ms[:, None])
    return ms, (ps * torch.exp(pms - ms[:, None])).sum(1), (pd + pc * (pms - ms[:, None])).sum(1), pc.sum(1)


def _finish(z, y, in_range, valid, zy, wy, scale, ms, log_s, c, dsum, sums, hv, active, passive,
            exact, compute_grad):
    """Per-row (weighted) loss and, if asked, the scaled gradient rows.

    ``sums``: the five stats2 row sums, or None to sum this chunk's own elements.
    ``y`` may lie outside [0, K) (class-parallel: the label is on another shard); the
    ``[j == y]`` term then lives on that shard.
    """
    a1, ea, b1, eb, bc, p = _elementwise(z, ms, log_s, torch.where(in_range, y, -1), hv, active,
                                         passive, exact)
    if sums is None:
        sums = [x.sum(1) if x.dim() == 2 else x.expand(z.shape[0]) for x in (a1, ea, b1, eb, bc)]
    S = dsum - c * log_s  # NCE's normalizer, sum_k l_k
    L, c1, c2a, c2b, c3a, c3b = _epilogue(ms, log_s, c, S, *sums, zy, hv, active, passive, exact)
    loss = torch.where(valid, L * wy, torch.zeros_like(L))
    if not compute_grad:
        return loss, None
    # per term, as in the kernel (see kernels/row_loss.py _grad_combine)
    g = c2a[:, None] * p + c3a[:, None] * ea
    g += c2b[:, None] * p + c3b[:, None] * eb
    g.scatter_add_(1, torch.where(in_range, y, 0)[:, None],
                   torch.where(in_range, c1, torch.zeros_like(c1))[:, None])
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    return loss, torch.where(valid[:, None], g * scale[:, None], zero)


def stats2_sums(z, y, in_range, ms, log_s, hv, active, passive, exact):
    """The five stats2 row sums (rows, 5) of a chunk (zeros for terms that need none)."""
    a1, ea, b1, eb, bc, p = _elementwise(z, ms, log_s, torch.where(in_range, y, -1), hv, active,
                                         passive, exact)
    return torch.stack([x.sum(1) if x.dim() == 2 else x.expand(z.shape[0])
                        for x in (a1, ea, b1, eb, bc)], 1)


def row_loss(z3, target, weight, hv, den, *, active, passive, exact, ignore_index,
             compute_grad, grad_dtype=None, out=None):
    """Same contract as kernels.launch.row_loss (hv: dict of double constants).

    ``out`` may be ``z3`` itself: each chunk is read completely before its gradient
    is written back.
    """
    n, k, d = z3.shape
    cdt = torch.float64 if z3.dtype == torch.float64 else torch.float32
    loss = torch.empty(n * d, dtype=cdt, device=z3.device)
    grad = None
    if compute_grad:
        grad = out if out is not None else torch.empty((n, k, d), dtype=grad_dtype or z3.dtype,
                                                       device=z3.device)
    for n0, n1, z in _row_chunks(z3):
        t = target[n0 * d:n1 * d].long()
        valid = t != ignore_index
        in_range = (t >= 0) & (t < k)
        ys = torch.where(in_range, t, 0)
        zy = z.gather(1, ys[:, None])[:, 0]
        zy = torch.where(in_range & (zy > float("-inf")), zy, torch.full_like(zy, float("nan")))
        ms, s, dsum, c = _stats1(z)
        wy = weight.to(cdt)[ys] if weight is not None else torch.ones_like(zy)
        scale = torch.where(valid, wy, torch.zeros_like(wy))
        if den is not None:
            scale = scale / den.to(cdt)
        lr, g = _finish(z, t, in_range, valid, zy, wy, scale, ms, torch.log(s), c, dsum, None, hv,
                        active, passive, exact, compute_grad)
        loss[n0 * d:n1 * d] = lr
        if compute_grad:
            grad[n0:n1] = g.reshape(n1 - n0, d, k).permute(0, 2, 1)
    return loss, grad
