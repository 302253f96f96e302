"""The loss terms in PyTorch ops: the torch twins of the Triton units of kernels/_terms.py.

Each function here has the name, the place in the order and the formulas of its Triton
twin (the derivations are in the twins' docstrings there); the analytic torch backend
(fused_anl/_torch_backend.py) dispatches to them through :data:`ACTIVE` and
:data:`PASSIVE`. A term's facts (hyperparameters, stats2, focal, constants, validation)
are its row of kernels/_codes.py ``TERMS``.

They work on a chunk of rows at once:

- ``L``, ``P``: the chunk's log-probabilities and probabilities (``rows x K``; ``P`` is
  None unless the unit is marked ``needs "p"``; ``L`` is only read).
- ``present``: None when no class of the chunk is absent, else the mask ``z > -inf``
  (built only for a loss with a unit that ``needs "row_stats"``).
- ``h``: the constants by name (fused_anl/_hyper.py ``by_name``).

Active units: ``<name>_elementwise(L, P, present, h, exact, need_sums) -> (ea, A1, EA)`` and
``<name>_epilogue(ly, py, c, S, A1, EA, h, exact) -> (L, c1, c2, c3)``.
Passive units: ``<name>_elementwise(L, P, present, ys, in_range, h, exact, need_sums)
-> (eb, B1, EB, BC)`` and ``<name>_epilogue(ly, py, c, B1, EB, BC, h, exact) -> (L, c1, c2, c3)``.
The row sums are None when ``need_sums`` is False (the sums come from elsewhere:
class-parallel shards) or when the term has none; ``e`` is None (no elementwise factor),
a ``rows x K`` tensor, or :data:`PRESENT` (1 on every present class).
"""
from __future__ import annotations

import torch

from .kernels import _codes as C

PRESENT = "present"


def _needs(*what):
    """Mark a unit with what the backend must build for it: ``"p"`` (the probabilities
    ``P``), ``"row_stats"`` (NCE's ``S``, the count ``c`` of present classes and the
    ``present`` mask)."""
    def mark(fn):
        fn.needs = frozenset(what)
        return fn
    return mark


def _pow(x, e):
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny) ** e,
                       torch.ones_like(x) if e == 0 else torch.zeros_like(x))


def _focal_u(l, p, w, gamma, exact):
    """d(w l)/dl with w = (1-p)^gamma: w if w is detached, else w - gamma l p w / (1-p)."""
    if not exact:
        return w
    om = 1.0 - p
    return torch.where(om > 0, w - gamma * l * p * w / torch.where(om > 0, om, 1.0), w)


def _row_sum(x, present):
    return (x if present is None else torch.where(present, x, 0.0)).sum(1)


# ----------------------------------------------------------------------------- the terms


def ce_epilogue(ly, py, c, S, A1, EA, h, exact):
    zero = torch.zeros_like(ly)
    return -ly, zero - 1.0, zero + 1.0, zero


def fl_epilogue(ly, py, c, S, A1, EA, h, exact):
    w = _pow(1.0 - py, h["gamma"])
    u = _focal_u(ly, py, w, h["gamma"], exact)
    return -w * ly, -u, u, torch.zeros_like(ly)


@_needs("row_stats")
def nce_elementwise(L, P, present, h, exact, need_sums):
    return PRESENT, None, None


@_needs("row_stats")
def nce_epilogue(ly, py, c, S, A1, EA, h, exact):
    # products of ratios rather than ly / S**2: S**2 overflows long before ly / S does;
    # divisions, not ly * (1 / S): ly / S is exactly 1 when the label holds the whole
    # normalizer, so 1/S - La/S cancels exactly (as in the kernels)
    La, k1 = ly / S, 1.0 / S
    return La, k1, -k1 + La * (c / S), -La / S


@_needs("p", "row_stats")
def nfl_elementwise(L, P, present, h, exact, need_sums):
    g = h["gamma"]
    w = _pow(1.0 - P, g)
    wl = w * L
    u = _focal_u(L, P, w, g, exact)
    if present is None:
        ea = u
    else:
        wl = torch.where(present, wl, 0.0)
        ea = torch.where(present, u, 0.0)
    return ea, (wl.sum(1) if need_sums else None), (ea.sum(1) if need_sums else None)


def nfl_epilogue(ly, py, c, S, A1, EA, h, exact):
    g = h["gamma"]
    wy = _pow(1.0 - py, g)
    uy = _focal_u(ly, py, wy, g, exact)
    La, k1 = (wy * ly) / A1, uy / A1
    return La, k1, -k1 + La * (EA / A1), -La / A1


def nnce_elementwise(L, P, present, ys, in_range, h, exact, need_sums):
    # v_k = A + max(l_k, log p_min) = max(l_k - log p_min, 0) (A = -log p_min): every
    # term >= 0, absent classes give 0
    lpm = h["log_pmin"]
    m = torch.ge(L, lpm, out=torch.empty_like(L))  # the mask as 0/1 values, one op
    if not need_sums:
        return m, None, None, None
    return m, torch.sub(L, lpm).clamp_min_(0.0).sum(1), m.sum(1), None


def nnce_epilogue(ly, py, c, B1, EB, BC, h, exact):
    lpm = h["log_pmin"]
    vy = h["A_nnce"] + ly.clamp_min(lpm)
    my = (ly >= lpm).to(ly.dtype)
    return 1.0 - vy / B1, -my / B1, my / B1 - vy * EB / B1**2, vy / B1**2


@_needs("p")
def nnfl_elementwise(L, P, present, ys, in_range, h, exact, need_sums):
    g, lpm = h["gamma"], h["log_pmin"]
    lc = L.clamp_min(lpm)
    w = _pow(1.0 - torch.exp(lc), g)
    keep = L >= lpm
    eb = torch.where(keep, _focal_u(L, P, w, g, exact), 0.0)
    if not need_sums:
        return eb, None, None, None
    return eb, torch.where(keep, h["A_nnfl"] + w * lc, 0.0).sum(1), eb.sum(1), None  # A' - FL_k


def nnfl_epilogue(ly, py, c, B1, EB, BC, h, exact):
    g, lpm = h["gamma"], h["log_pmin"]
    lcy = ly.clamp_min(lpm)
    wy = _pow(1.0 - torch.exp(lcy), g)
    uy = torch.where(ly >= lpm, _focal_u(ly, py, wy, g, exact), torch.zeros_like(ly))
    nr = (h["A_nnfl"] + wy * lcy) / B1
    k1 = -uy / B1
    return 1.0 - nr, k1, -k1 - nr * (EB / B1), nr / B1


def mae_epilogue(ly, py, c, B1, EB, BC, h, exact):
    return 1.0 - py, -py, py, torch.zeros_like(ly)


@_needs("p", "row_stats")
def rce_elementwise(L, P, present, ys, in_range, h, exact, need_sums):
    # e = p [k != y][p >= floor] over present classes (absent: p = 0 < floor)
    eb = torch.where(P >= C.P_FLOOR, P, 0.0)
    yi = torch.where(in_range, ys, 0)[:, None]
    eb.scatter_(1, yi, torch.where(in_range, 0.0, eb.gather(1, yi)[:, 0])[:, None])
    if not need_sums:
        return eb, None, None, None
    b1 = P.clamp_min(C.P_FLOOR)
    b1.scatter_(1, yi, torch.where(in_range, 0.0, b1.gather(1, yi)[:, 0])[:, None])
    # BC: the other p's (p_y included)
    return eb, _row_sum(b1, present), eb.sum(1), torch.sub(P, eb).sum(1)


def rce_epilogue(ly, py, c, B1, EB, BC, h, exact):
    # a p_select term: c2 = -A4 Q off Q, c3 = A4 (1 - Q) on it (1 - Q = BC where Q is near 1)
    near1 = EB > 0.5
    return (C.RCE_A * B1, torch.zeros_like(ly), -C.RCE_A * torch.where(near1, 1.0 - BC, EB),
            C.RCE_A * torch.where(near1, BC, 1.0 - EB))


def gce_epilogue(ly, py, c, B1, EB, BC, h, exact):
    q = h["q"]
    pq = _pow(py.clamp_min(C.P_FLOOR), q)
    k1 = torch.where(py >= C.P_FLOOR, -pq, torch.zeros_like(ly))
    return (1.0 - pq) / q, k1, -k1, torch.zeros_like(ly)


def agce_epilogue(ly, py, c, B1, EB, BC, h, exact):
    q, a = h["q"], h["a"]
    k1 = -_pow(a + py, q - 1.0) * py
    return (h["C_pass"] - _pow(a + py, q)) / q, k1, -k1, torch.zeros_like(ly)


def aul_epilogue(ly, py, c, B1, EB, BC, h, exact):
    q, a = h["q"], h["a"]
    k1 = -_pow(a - py, q - 1.0) * py
    return (_pow(a - py, q) - h["C_pass"]) / q, k1, -k1, torch.zeros_like(ly)


def ael_epilogue(ly, py, c, B1, EB, BC, h, exact):
    Lb = torch.exp(-py / h["a"])
    k1 = -Lb / h["a"] * py
    return Lb, k1, -k1, torch.zeros_like(ly)


@_needs("p")
def amse_elementwise(L, P, present, ys, in_range, h, exact, need_sums):
    # the other classes' p (y's column 0; absent: p = 0); e = their p^2; BC = their sum,
    # i.e. 1 - p_y without cancellation
    yi = torch.where(in_range, ys, 0)[:, None]
    po = P.scatter(1, yi, torch.where(in_range, 0.0, P.gather(1, yi)[:, 0])[:, None])
    eb = po * po
    if not need_sums:
        return eb, None, None, None
    q2 = eb.sum(1)
    return eb, q2, q2, po.sum(1)


@_needs("row_stats")
def amse_epilogue(ly, py, c, B1, EB, BC, h, exact):
    a = h["a"]
    D = torch.where(py > 0.5, (a - 1.0) + BC, a - py)
    r = 2.0 / c
    return (D * D + B1) / c, -r * py * D, r * (py * D - B1), torch.zeros_like(ly) + r


@_needs("row_stats")
def ls_elementwise(L, P, present, ys, in_range, h, exact, need_sums):
    # e = w_k on present classes (w: the class weights ``h["ls_weight"]``, or 1); B1 = sum
    # w_k l_k, EB = sum w_k, BC = w_y (0 where the label is not in this chunk's columns)
    w = h.get("ls_weight")
    one = torch.ones((), dtype=L.dtype, device=L.device)
    if w is None:
        eb = one.expand_as(L) if present is None else present.to(L.dtype)
        wy = torch.where(in_range, one, 0.0)
    else:
        eb = w.expand_as(L) if present is None else torch.where(present, w, 0.0)
        wy = torch.where(in_range, w[torch.where(in_range, ys, 0)], 0.0)
    if not need_sums:
        return eb, None, None, None
    wl = L * eb if present is None else torch.where(present, L * eb, 0.0)
    return eb, wl.sum(1), eb.sum(1), wy


@_needs("row_stats")
def ls_epilogue(ly, py, c, B1, EB, BC, h, exact):
    eps = h["label_smoothing"]
    r = eps / c
    k1 = -(1.0 - eps) * BC
    return k1 * ly - r * B1, k1, -k1 + r * EB, torch.zeros_like(ly) - r


# -------------------------------------------------------------- the dispatch on the codes
# code -> (elementwise unit or None, epilogue unit or None); NONE: no term.
ACTIVE = {
    C.A_NONE: (None, None),
    C.A_CE: (None, ce_epilogue),
    C.A_FL: (None, fl_epilogue),
    C.A_NCE: (nce_elementwise, nce_epilogue),
    C.A_NFL: (nfl_elementwise, nfl_epilogue),
}
PASSIVE = {
    C.P_NONE: (None, None),
    C.P_NNCE: (nnce_elementwise, nnce_epilogue),
    C.P_NNFL: (nnfl_elementwise, nnfl_epilogue),
    C.P_MAE: (None, mae_epilogue),
    C.P_RCE: (rce_elementwise, rce_epilogue),
    C.P_GCE: (None, gce_epilogue),
    C.P_AGCE: (None, agce_epilogue),
    C.P_AUL: (None, aul_epilogue),
    C.P_AEL: (None, ael_epilogue),
    C.P_AMSE: (amse_elementwise, amse_epilogue),
    C.P_LS: (ls_elementwise, ls_epilogue),
}


def needs(active: int, passive: int, what: str) -> bool:
    """Whether a unit of the loss needs ``what`` (``"p"`` or ``"row_stats"``)."""
    units = ACTIVE[active] + PASSIVE[passive]
    return any(what in getattr(u, "needs", ()) for u in units if u is not None)
