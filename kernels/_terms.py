"""The loss family's math as Triton device functions (no kernels, no launches).

Every loss is ``alpha * ACTIVE + beta * PASSIVE`` and is computed in three steps:

1. stats1 over the row (online): ``m = max z``, ``s = sum exp(z - m)``,
   ``d = sum (z - m)``, ``c = #present`` (present: ``z > -inf``). Hence
   ``lse = m + log s`` and NCE's normalizer ``S = sum_k l_k = d - c log s``.
2. stats2 over the row, once lse is known, for the terms that need it
   (NFL, NNCE, NNFL, RCE, AMSE): per-element values ``a1, ea, b1, eb`` summed to
   ``A1, EA, B1, EB`` (see ``elementwise``).
3. the gradient ``dL/dz_j = c1 [j == y] + (c2a p_j + c3a ea_j) + (c2b p_j + c3b eb_j)`` with
   row scalars from ``epilogue``. ``ea``/``eb`` are the active/passive terms'
   elementwise masks or weights, the same values that stats2 summed.

Each term is one unit, in the section "The terms" below: ``<name>_epilogue`` (its loss
and gradient coefficients from the row sums, with the derivation in its docstring) and,
for a term with an elementwise factor ``e_j``, ``<name>_elementwise`` (what stats2 sums
and the ``e_j``). Their torch twins have the same names in fused_anl/_torch_terms.py,
the term's facts (hyperparameters, stats2 or not, focal or not, derived constants,
validation) are its row of kernels/_codes.py ``TERMS``, and ``elementwise`` and
``epilogue`` at the end of this file dispatch on the compile-time codes.

Derivations use ``dl_k/dz_j = [k == j] - p_j`` and ``dp_y/dz_j = p_y([j==y] - p_j)``.
"""
import inspect
import os

import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from . import _codes as C

A_NONE = tl.constexpr(C.A_NONE)
A_CE = tl.constexpr(C.A_CE)
A_FL = tl.constexpr(C.A_FL)
A_NCE = tl.constexpr(C.A_NCE)
A_NFL = tl.constexpr(C.A_NFL)
P_NONE = tl.constexpr(C.P_NONE)
P_NNCE = tl.constexpr(C.P_NNCE)
P_NNFL = tl.constexpr(C.P_NNFL)
P_MAE = tl.constexpr(C.P_MAE)
P_RCE = tl.constexpr(C.P_RCE)
P_GCE = tl.constexpr(C.P_GCE)
P_AGCE = tl.constexpr(C.P_AGCE)
P_AUL = tl.constexpr(C.P_AUL)
P_AEL = tl.constexpr(C.P_AEL)
P_AMSE = tl.constexpr(C.P_AMSE)
P_LS = tl.constexpr(C.P_LS)
H_ALPHA = tl.constexpr(C.H_ALPHA)
H_BETA = tl.constexpr(C.H_BETA)
H_GAMMA = tl.constexpr(C.H_GAMMA)
H_Q = tl.constexpr(C.H_Q)
H_A = tl.constexpr(C.H_A)
H_LOG_PMIN = tl.constexpr(C.H_LOG_PMIN)
H_A_NNCE = tl.constexpr(C.H_A_NNCE)
H_A_NNFL = tl.constexpr(C.H_A_NNFL)
H_C_PASS = tl.constexpr(C.H_C_PASS)
H_RCE_A = tl.constexpr(C.H_RCE_A)
H_P_FLOOR = tl.constexpr(C.H_P_FLOOR)
H_Z_LOSS = tl.constexpr(C.H_Z_LOSS)
H_SOFTCAP = tl.constexpr(C.H_SOFTCAP)
H_LS = tl.constexpr(C.H_LS)
H_LS_WEIGHTED = tl.constexpr(C.H_LS_WEIGHTED)
H_SIZE = tl.constexpr(C.H_SIZE)
NEG_INF = tl.constexpr(float("-inf"))
# exp(x) = exp2(x log2 e): on the GPU tl.exp compiles to ex2.approx of x * log2 e plus a
# fix-up for results under 2^-126 (about four instructions); tl.math.exp2 is the
# ex2.approx alone (one MUFU.EX2; a result under 2^-126 flushes to 0), so per element
# ``fast_exp`` costs a multiply and the MUFU, and is no less accurate than tl.exp there.
LOG2E = tl.constexpr(1.4426950408889634)


# log2 per element: tl.math.log2 (and tl.log) compile to libdevice's accurate software
# logarithm in float32, about 20 instructions per element on sm_90 (12 of them FFMA);
# libdevice's fast_log2f is one MUFU.LG2 (lg2.approx), absolute error <= 2^-22.6 (PTX ISA),
# so exp2(g * log2 x) gains a relative error <= g 2^-22.6 ln 2 (~0.9 g eps), beside
# ex2.approx's own. The interpreter has no libdevice: it runs numpy's exact log2 (as its
# exp2 is exact where the GPU's is ex2.approx).
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")
# Approximate float32 division: Triton 3.9 spells it ``fdiv(x, y, approx=True)``
# (div.approx.f32, within 2 ulp for a divisor in [2^-126, 2^126]); earlier releases (the
# GPU image's 3.6) have no such flag. There ``/`` is used: it compiles to div.full.f32 in
# both (within 2 ulp over the full range; a few instructions more).
FDIV_HAS_APPROX = tl.constexpr("approx" in inspect.signature(tl.math.fdiv).parameters)


# The constants vector (kernels/_codes.py ``H_*``, H_SIZE values; label smoothing's class
# weights follow it) reaches the units as ``h = (h_ptr, (v_0, ..., v_{H_SIZE-1}))``, loaded
# once per row (per program in the split kernels: ``load_hyper``), not by the units: a
# constant loaded inside the gradient's loop is loaded again every block (three
# instructions), since the compiler cannot tell that the gradient's stores leave it
# alone. The compiler drops the loads of the constants a loss does not read. A unit reads
# a constant with ``hyper(h, H_...)``.


@triton.jit
def load_hyper(h_ptr, LOAD: tl.constexpr = True):
    """``h`` of the constants vector at ``h_ptr``: its pointer and its H_SIZE values (none
    when not LOAD: a kernel that reads no constant, whose ``h_ptr`` may point elsewhere)."""
    vals = ()
    if LOAD:
        for i in tl.static_range(H_SIZE):
            vals = vals + (tl.load(h_ptr + i),)
    return h_ptr, vals


@triton.jit
def hyper(h, i: tl.constexpr):
    """The constant ``H_*`` number ``i`` of ``h`` (``load_hyper``)."""
    return h[1][i]


@triton.jit
def hyper_ptr(h):
    """The pointer of ``h``'s constants vector (per-class data follows its H_SIZE values)."""
    return h[0]


@triton.jit
def fast_log2(x):
    """log2(x), per element: MUFU.LG2 in float32 on the GPU (see INTERPRETED), exact in
    float64 and under the interpreter. log2(0) = -inf."""
    if x.dtype == tl.float64:
        return tl.math.log2(x)
    elif INTERPRETED:
        return tl.math.log2(x)
    else:
        return libdevice.fast_log2f(x)


@triton.jit
def fast_exp(x):
    """exp(x), per element: ``exp2(x * LOG2E)`` in float32; ``tl.exp`` in float64, where a
    LOG2E rounded to float32 would cost the float64 path its accuracy."""
    if x.dtype == tl.float64:
        return tl.exp(x)
    else:
        return tl.math.exp2(x * LOG2E)


@triton.jit
def _pow(x, e):
    """x**e for x >= 0 (0**0 = 1, 0**e = 0 for e > 0): ``exp2(e log2 x)`` in float32 with
    the accurate log2, ``exp(e log x)`` in float64. For the epilogues' scalars; the
    per-element focal weight is ``_focal_weight``."""
    xs = tl.where(x > 0, x, 1.0)
    if xs.dtype == tl.float64:
        r = tl.exp(e * tl.log(xs))
    else:
        r = tl.math.exp2(e * tl.math.log2(xs))
    return tl.where(x > 0, r, tl.where(e == 0, 1.0, 0.0))


@triton.jit
def _focal_weight(p, gamma):
    """``(1 - p)^gamma`` per element, for ``gamma >= 0`` (checked by the API): ``_pow`` with
    one guard fewer and the GPU's approximate log2 (``fast_log2``). ``1 - p`` is clamped
    at 0 (a p rounded over 1), whose log2 is -inf, so ``exp2(gamma * -inf) = 0`` for
    gamma > 0; gamma == 0 gives 1 everywhere (0**0)."""
    x = tl.maximum(1.0 - p, 0.0)
    if x.dtype == tl.float64:
        r = tl.exp(gamma * tl.log(x))
    else:
        r = tl.math.exp2(gamma * fast_log2(x))
    return tl.where(gamma == 0, 1.0, r)


@triton.jit
def _focal_u(l, p, w, gamma, EXACT: tl.constexpr):
    """d(w l)/dl for w = (1-p)^gamma: w when w is detached, else w - g l p w / (1-p)."""
    if EXACT:
        om = 1.0 - p
        oms = tl.where(om > 0, om, 1.0)
        return tl.where(om > 0, w - gamma * l * p * w / oms, w)
    else:
        return w


@triton.jit
def softcap(z, h):
    """``cap * tanh(z / cap)`` (cap: the vector's H_SOFTCAP); ``-inf`` stays ``-inf`` (an
    absent class), ``+inf`` becomes NaN (its row is then NaN, as without a cap).
    ``tanh x = sign(x) (1 - e) / (1 + e)``, ``e = exp(-2|x|)``: exact to an absolute
    ~eps in tanh, i.e. ~eps * cap in the capped logit, the rounding of a logit of
    magnitude cap (the softmax sees absolute errors; no cancellation matters beyond it).
    In float32 per element: ``z * (1/cap)``, ex2 and the GPU's approximate division
    (``1 + e`` is in [1, 2], where div.approx is within 2 ulp): a few ulps of tanh, the
    same ~eps * cap, at a fraction of the instructions of exp and an IEEE division."""
    cap = hyper(h, H_SOFTCAP)
    x = z * (1.0 / cap)
    if x.dtype == tl.float64:
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
    else:
        e = tl.math.exp2(tl.abs(x) * (-2.0 * LOG2E))
        if FDIV_HAS_APPROX:
            t = tl.math.fdiv(1.0 - e, 1.0 + e, approx=True)
        else:
            t = (1.0 - e) / (1.0 + e)
    zc = cap * tl.where(x < 0, -t, t)
    zc = tl.where(z == float("inf"), float("nan"), zc)
    return tl.where(z == NEG_INF, z, zc)


@triton.jit
def softcap_grad(g, zc, h):
    """The chain rule through the cap: ``g dz'/dz = g (1 - (z'/cap)^2)`` from the capped
    logit ``zc`` (0 on absent classes, whose g is 0; NaN stays NaN)."""
    t = zc * (1.0 / hyper(h, H_SOFTCAP))
    return g * tl.where(zc != NEG_INF, 1.0 - t * t, 0.0)


@triton.jit
def stats1_block(z):
    """(max, sum exp(z - max), sum (z - max), #present) of one block, absent entries
    skipped, and the exponentials ``exp(z - max)`` it summed (0 where absent): a row held
    in one block has its probabilities ``p = e / s`` from them (kernels/row_loss.py).

    Non-finite logits: ``s`` needs no mask, as an absent entry's ``exp(-inf - m)`` is 0,
    while a NaN (``exp(NaN)``) or a ``+inf`` (then ``m = +inf`` and ``inf - inf``) makes
    ``s`` NaN, and with it ``log s``, every ``l``,
    ``p``, the loss and the gradient of the row: a NaN or ``+inf`` anywhere in a row gives
    a NaN row, as ``torch.nn.functional.cross_entropy`` does (``tl.max`` may drop a NaN
    on the GPU; ``s`` does not). The merges and the split/shard partial combines carry
    a NaN ``s`` through.
    """
    present = z > NEG_INF
    m = tl.max(z, 0)
    ms = tl.where(m > NEG_INF, m, 0.0)
    # exp(-inf - ms) is 0: the absent entries need no mask (ms is never -inf)
    e = fast_exp(z - ms)
    s = tl.sum(e, 0)
    d = tl.sum(tl.where(present, z - ms, 0.0), 0)
    c = tl.sum(tl.where(present, 1.0, 0.0).to(z.dtype), 0)
    return m, s, d, c, e


# ----------------------------------------------------------------------------- the terms
# Active units: ``<name>_elementwise(z, l, p, present, h, EXACT) -> (a1, ea)`` and
# ``<name>_epilogue(ly, py, c, S, A1, EA, h, EXACT) -> (L, c1, c2, c3)``.
# Passive units: ``<name>_elementwise(z, l, p, present, cols, y, h, EXACT) -> (b1, eb, bc)``
# (``ls`` also takes ``col0``, see ``elementwise``)
# and ``<name>_epilogue(ly, py, c, B1, EB, BC, h, EXACT) -> (L, c1, c2, c3)``.
# ``l``/``p``: the row's log-probabilities and probabilities (p = 0 where absent),
# ``S = sum_k l_k`` over present classes, ``c`` = #present; A1, EA, B1, EB, BC: row sums
# of a1, ea, b1, eb, bc. The gradient is ``c1 [j == y] + c2 p_j + c3 e_j``; a ``p_select``
# term (kernels/_codes.py; RCE) returns its set's indicator as e, and its c3 is the
# coefficient of p_j on the set (kernels/row_loss.py ``_grad_combine``).


@triton.jit
def ce_epilogue(ly, py, c, S, A1, EA, h, EXACT: tl.constexpr):
    """CE ``-l_y``: c1 = -1, c2 = 1."""
    zero = tl.zeros_like(ly)  # not ly * 0.0: that is NaN where ly = -inf (CE = +inf is right)
    return -ly, zero - 1.0, zero + 1.0, zero


@triton.jit
def fl_epilogue(ly, py, c, S, A1, EA, h, EXACT: tl.constexpr):
    """FL ``-w_y l_y``, ``w = (1-p)^g`` detached: c1 = -u_y, c2 = u_y, with ``u = w``
    (detached) or ``u = w + l p dw/dp = w - g l p w / (1 - p)`` (exact derivative)."""
    gamma = hyper(h, H_GAMMA)
    w = _pow(1.0 - py, gamma)
    u = _focal_u(ly, py, w, gamma, EXACT)
    return -w * ly, -u, u, tl.zeros_like(ly)


@triton.jit
def nce_elementwise(z, l, p, present, h, EXACT: tl.constexpr):
    """NCE's e: 1 on present classes (S and c come from stats1: no stats2)."""
    return tl.zeros_like(z), tl.where(present, 1.0, 0.0).to(z.dtype)


@triton.jit
def nce_epilogue(ly, py, c, S, A1, EA, h, EXACT: tl.constexpr):
    """NCE ``l_y / S``: c1 = 1/S, c2 = -1/S + l_y c / S^2, c3 = -l_y / S^2, e = present."""
    # ratios first: ly * c / S^2 overflows float32 for huge logits where (ly/S)(c/S) does not
    La = ly / S
    return La, 1.0 / S, -1.0 / S + La * (c / S), -La / S


@triton.jit
def nfl_elementwise(z, l, p, present, h, EXACT: tl.constexpr):
    """NFL's a1 = w l (summed to T) and e = u, on present classes."""
    gamma = hyper(h, H_GAMMA)
    w = _focal_weight(p, gamma)
    return (tl.where(present, w * l, 0.0),
            tl.where(present, _focal_u(l, p, w, gamma, EXACT), 0.0))


@triton.jit
def nfl_epilogue(ly, py, c, S, A1, EA, h, EXACT: tl.constexpr):
    """NFL ``w_y l_y / T``, ``T = sum_k w_k l_k`` (= A1): dT/dz_j = u_j - p_j U (U = EA), so
    c1 = u_y/T, c2 = -u_y/T + w_y l_y U / T^2, c3 = -w_y l_y / T^2, e = u (present)."""
    gamma = hyper(h, H_GAMMA)
    wy = _pow(1.0 - py, gamma)
    uy = _focal_u(ly, py, wy, gamma, EXACT)
    La = (wy * ly) / A1
    return La, uy / A1, -uy / A1 + La * (EA / A1), -La / A1


@triton.jit
def nnce_elementwise(z, l, p, present, cols, y, h, EXACT: tl.constexpr):
    """NNCE's b1 = v = A + max(l, log p_min) (0 where absent) and e = m = [l >= log p_min]."""
    log_pmin = hyper(h, H_LOG_PMIN)
    b1 = hyper(h, H_A_NNCE) + tl.maximum(l, log_pmin)
    return b1, tl.where(l >= log_pmin, 1.0, 0.0).to(z.dtype), tl.zeros_like(z)


@triton.jit
def nnce_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """NNCE ``1 - v_y / V``, ``v = A + max(l, log p_min)``, ``m_k = [l_k >= log p_min]``
    (V = B1, M = EB): c1 = -m_y/V, c2 = m_y/V - v_y M / V^2, c3 = v_y / V^2, e = m."""
    log_pmin = hyper(h, H_LOG_PMIN)
    vy = hyper(h, H_A_NNCE) + tl.maximum(ly, log_pmin)
    my = tl.where(ly >= log_pmin, 1.0, 0.0)
    r = vy / B1
    return 1.0 - r, -my / B1, my / B1 - r * (EB / B1), r / B1


@triton.jit
def nnfl_elementwise(z, l, p, present, cols, y, h, EXACT: tl.constexpr):
    """NNFL's b1 = A' - FL_k and e = m u (both 0 where clamped or absent).

    Where a class is not clamped (``l >= log p_min``) its clamped ``l`` and ``p`` are the
    row's own, so ``w = (1 - p)^gamma`` is written from ``p``: the same expression as
    NFL's (``nfl_elementwise``), which the compiler then computes once for ANL-FL (two
    MUFU per element, and the exp of the clamped l, saved); where it is clamped both
    outputs are 0, whatever w is there.
    """
    log_pmin = hyper(h, H_LOG_PMIN)
    gamma = hyper(h, H_GAMMA)
    w = _focal_weight(p, gamma)
    kept = l >= log_pmin
    # A' - FL_k >= 0, exactly 0 where clamped (computing it there would leave a
    # rounding residue of ~eps A' per clamped class).
    b1 = tl.where(kept, hyper(h, H_A_NNFL) + w * l, 0.0)
    eb = tl.where(kept, _focal_u(l, p, w, gamma, EXACT), 0.0)
    return b1, eb, tl.zeros_like(z)


@triton.jit
def nnfl_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """NNFL ``1 - (A' - FL_y) / (c A' - sum FL)``, ``FL = -w(lc) lc``, ``lc = max(l, log p_min)``:
    with ``N = A' - FL_y``, ``D = c A' - sum FL`` (= B1), ``e = m u``, ``E = sum e`` (= EB):
    c1 = -m_y u_y / D, c2 = m_y u_y / D - N E / D^2, c3 = N / D^2.
    D is summed as ``sum_k (A' - FL_k)`` over present classes: every term is >= 0, so
    no cancellation (``K A' - sum FL`` loses ~eps K A' in float32 when many classes are
    clamped); absent classes have FL = A' and contribute 0 either way."""
    log_pmin = hyper(h, H_LOG_PMIN)
    gamma = hyper(h, H_GAMMA)
    a_nnfl = hyper(h, H_A_NNFL)
    lcy = tl.maximum(ly, log_pmin)
    wy = _pow(1.0 - tl.exp(lcy), gamma)
    uy = tl.where(ly >= log_pmin, _focal_u(ly, py, wy, gamma, EXACT), 0.0)
    r = (a_nnfl + wy * lcy) / B1
    return 1.0 - r, -uy / B1, uy / B1 - r * (EB / B1), r / B1


@triton.jit
def mae_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """MAE ``1 - p_y`` (``L = f(p_y)``: c1 = f'(p_y) p_y, c2 = -c1)."""
    return 1.0 - py, -py, py, tl.zeros_like(ly)


@triton.jit
def rce_elementwise(z, l, p, present, cols, y, h, EXACT: tl.constexpr):
    """RCE's b1 = max(p, 1e-7) on present k != y; e = [k != y][p >= 1e-7], the indicator
    of Q's classes (a ``p_select`` term: stats2 sums ``p e``, Q itself, and the gradient
    selects its coefficient by it); and bc,
    p off Q, so that 1 - Q = sum(bc) is exact."""
    floor = hyper(h, H_P_FLOOR)
    other = present & (cols != y)
    b1 = tl.where(other, tl.maximum(p, floor), 0.0)
    in_q = other & (p >= floor)
    return b1, tl.where(in_q, 1.0, 0.0).to(z.dtype), tl.where(in_q, 0.0, p)


@triton.jit
def rce_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """RCE ``A4 sum_{k != y, present} max(p_k, 1e-7)``, with ``Q = sum e`` (= EB): its
    gradient is ``A4 p_j (1 - Q)`` on the classes in Q and ``-A4 Q p_j`` elsewhere (a
    ``p_select`` term, kernels/_codes.py): c2 = -A4 Q, c3 = A4 (1 - Q). When Q is near 1
    (a confident wrong class), ``1 - Q`` is BC, the sum of the other p's, which float32
    resolves (no cancellation), and Q is ``1 - BC``."""
    rce_a = hyper(h, H_RCE_A)
    near1 = EB > 0.5
    return (rce_a * B1, tl.zeros_like(ly), -rce_a * tl.where(near1, 1.0 - BC, EB),
            rce_a * tl.where(near1, BC, 1.0 - EB))


@triton.jit
def gce_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """GCE ``(1 - max(p_y, 1e-7)^q) / q``: c1 = -p_y^q, c2 = -c1 (the clamp zeroes both
    where p_y < 1e-7)."""
    q = hyper(h, H_Q)
    floor = hyper(h, H_P_FLOOR)
    pq = _pow(tl.maximum(py, floor), q)
    k1 = tl.where(py >= floor, -pq, 0.0)
    return (1.0 - pq) / q, k1, -k1, tl.zeros_like(ly)


@triton.jit
def agce_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """AGCE ``((a+1)^q - (a+p_y)^q) / q``: c1 = -(a+p_y)^(q-1) p_y, c2 = -c1."""
    q = hyper(h, H_Q)
    a = hyper(h, H_A)
    k1 = -_pow(a + py, q - 1.0) * py
    return (hyper(h, H_C_PASS) - _pow(a + py, q)) / q, k1, -k1, tl.zeros_like(ly)


@triton.jit
def aul_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """AUL ``((a-p_y)^q - (a-1)^q) / q``: c1 = -(a-p_y)^(q-1) p_y, c2 = -c1."""
    q = hyper(h, H_Q)
    a = hyper(h, H_A)
    k1 = -_pow(a - py, q - 1.0) * py
    return (_pow(a - py, q) - hyper(h, H_C_PASS)) / q, k1, -k1, tl.zeros_like(ly)


@triton.jit
def ael_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """AEL ``exp(-p_y / a)``: c1 = -L p_y / a, c2 = -c1."""
    a = hyper(h, H_A)
    Lb = tl.exp(-py / a)
    k1 = -Lb / a * py
    return Lb, k1, -k1, tl.zeros_like(ly)


@triton.jit
def amse_elementwise(z, l, p, present, cols, y, h, EXACT: tl.constexpr):
    """AMSE's b1 = e = p^2 and bc = p, both on present k != y (so B1 = EB = Q2, the other
    classes' sum of squares, and BC = 1 - p_y, resolved where p_y is near 1)."""
    other = present & (cols != y)
    p2 = tl.where(other, p * p, 0.0)
    return p2, p2, tl.where(other, p, 0.0)


@triton.jit
def amse_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """AMSE ``(1/K) sum_k (p_k - a [k == y])^2 = ((a - p_y)^2 + Q2) / K`` over the K = c
    present classes, ``Q2 = sum_{k != y} p_k^2`` (= B1): a sum of squares, no cancellation.
    With ``D = a - p_y``, ``dL/dz_j = (2/K)(p_j^2 - p_j sum_k p_k^2 - a p_y [j == y]
    + a p_y p_j)`` is, with ``e = p^2 [j != y]``:
    c1 = -(2/K) p_y D, c2 = (2/K)(p_y D - Q2), c3 = 2/K.
    (The y column, c1 + c2 p_y = -(2/K) p_y (D (1 - p_y) + Q2), cancels only by
    ~eps |D| 2/K: for a = 1 and p_y near 1 that is small, where ``e = p^2`` at y too would
    leave ~eps (a + 1) 2/K.) ``D`` is ``(a - 1) + BC`` where p_y > 1/2 (``1 - p_y`` as the
    sum of the other p's), else ``a - p_y``."""
    a = hyper(h, H_A)
    D = tl.where(py > 0.5, (a - 1.0) + BC, a - py)
    r = 2.0 / c
    return (D * D + B1) / c, -r * py * D, r * (py * D - B1), tl.zeros_like(ly) + r


@triton.jit
def ls_elementwise(z, l, p, present, cols, y, h, EXACT: tl.constexpr, col0):
    """Label smoothing's b1 = w l, e = w (present classes) and bc = w [k == y], with w the
    class weights (read after the constants vector when H_LS_WEIGHTED is 1) or 1: so
    B1 = sum w_k l_k, EB = W = sum w_k and BC = w_y. ``col0``: the block's first column
    (``cols`` are relative to it, see ``elementwise``)."""
    w = tl.where(present, 1.0, 0.0).to(z.dtype)
    if hyper(h, H_LS_WEIGHTED) != 0:
        w = tl.load(hyper_ptr(h) + H_SIZE + col0 + cols, mask=present, other=0.0).to(z.dtype)
    return tl.where(present, w * l, 0.0), w, tl.where(cols == y, w, 0.0)


@triton.jit
def ls_epilogue(ly, py, c, B1, EB, BC, h, EXACT: tl.constexpr):
    """CE with label smoothing eps, as ``F.cross_entropy``: ``-(1 - eps) w_y l_y - (eps/K)
    sum_k w_k l_k`` over the K = c present classes. With ``dl_k/dz_j = [k == j] - p_j``:
    c1 = -(1 - eps) w_y, c2 = (1 - eps) w_y + (eps/K) W, c3 = -eps/K, e = w."""
    eps = hyper(h, H_LS)
    r = eps / c
    k1 = -(1.0 - eps) * BC
    return k1 * ly - r * B1, k1, -k1 + r * EB, tl.zeros_like(ly) - r


@triton.jit
def z_loss_weight(BC, PASSIVE: tl.constexpr):
    """The z-loss's own factor: the LS term carries its label's class weight itself (BC =
    w_y; the rows are not scaled by it), so the z-loss takes it from there; 1 otherwise."""
    w = BC * 0.0 + 1.0
    if PASSIVE == P_LS:
        w = BC
    return w


# -------------------------------------------------------------- the dispatch on the codes


@triton.jit
def probs(z, m, log_s):
    """The row's log-probabilities ``l`` and probabilities ``p`` at the logits ``z`` of one
    block, from the row's max ``m`` and ``log s`` (stats1): ``l = (z - m) - log s``, not
    ``z - lse``: exact for the max entry, and no absolute error of eps * |lse| for exp() to
    amplify (it matters for logits of large magnitude). An absent class (-inf) has
    ``l = -inf`` and ``p = 0`` without a mask; a NaN row (s NaN) NaN everywhere.

    In float32 ``p = exp2(fma(z - m, log2 e, -log2 s))`` from the same ``z - m``: one
    rounding of the exponent, as ``exp2(l log2 e)`` has two, and per element a subtract,
    an FFMA and the MUFU where that is a subtract, a subtract, a multiply and the MUFU
    (the compiler drops ``l`` where a loss reads only ``p``). ``log2 s`` is ``log s``
    times log2 e, rounded once per row: an error of eps log2 s in every exponent, as
    ``log s``'s own rounding is in ``l``."""
    t = z - m
    l = t - log_s
    if z.dtype == tl.float64:
        p = tl.exp(l)
    else:
        p = tl.math.exp2(tl.fma(t, LOG2E, -(log_s * LOG2E)))
    return l, p


@triton.jit
def elementwise(z, l, p, cols, y, col0, h, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr,
                EXACT: tl.constexpr):
    """Per-element (a1, ea, b1, eb, bc): what stats2 sums, what the gradient weights, at the
    logits ``z`` of one block, their ``l`` and ``p`` (``probs``, or from stats1's
    exponentials where the row is one block).

    ``cols`` and the label ``y`` are relative to the block's first column ``col0`` (int32
    arithmetic per element; kernels/row_loss.py ``_block_label``): a unit that reads
    per-class data (label smoothing's class weights) reads it at ``col0 + cols``.

    a1/ea: the active term's stats2 value and e (its ``<name>_elementwise``); b1/eb/bc:
    the passive term's. Terms without an elementwise unit give zeros.
    """
    present = z > NEG_INF
    zero = tl.zeros_like(z)
    a1 = zero
    ea = zero
    if ACTIVE == A_NCE:
        a1, ea = nce_elementwise(z, l, p, present, h, EXACT)
    if ACTIVE == A_NFL:
        a1, ea = nfl_elementwise(z, l, p, present, h, EXACT)
    b1 = zero
    eb = zero
    bc = zero
    if PASSIVE == P_NNCE:
        b1, eb, bc = nnce_elementwise(z, l, p, present, cols, y, h, EXACT)
    if PASSIVE == P_NNFL:
        b1, eb, bc = nnfl_elementwise(z, l, p, present, cols, y, h, EXACT)
    if PASSIVE == P_RCE:
        b1, eb, bc = rce_elementwise(z, l, p, present, cols, y, h, EXACT)
    if PASSIVE == P_AMSE:
        b1, eb, bc = amse_elementwise(z, l, p, present, cols, y, h, EXACT)
    if PASSIVE == P_LS:
        b1, eb, bc = ls_elementwise(z, l, p, present, cols, y, h, EXACT, col0)
    return a1, ea, b1, eb, bc


@triton.jit
def epilogue(m, s, d, c, A1, EA, B1, EB, BC, zy, h, ACTIVE: tl.constexpr,
             PASSIVE: tl.constexpr, EXACT: tl.constexpr, Z_LOSS: tl.constexpr = False):
    """Per-row loss, gradient coefficients (c1, c2a, c2b, c3a, c3b) and log s from the row sums."""
    log_s = tl.log(s)
    ly = (zy - m) - log_s
    py = tl.exp(ly)
    S = d - c * log_s  # NCE's normalizer sum_k l_k
    alpha = hyper(h, H_ALPHA)
    beta = hyper(h, H_BETA)
    zero = tl.zeros_like(ly)
    La = zero
    k1a = zero
    k2a = zero
    k3a = zero
    if ACTIVE == A_CE:
        La, k1a, k2a, k3a = ce_epilogue(ly, py, c, S, A1, EA, h, EXACT)
    if ACTIVE == A_FL:
        La, k1a, k2a, k3a = fl_epilogue(ly, py, c, S, A1, EA, h, EXACT)
    if ACTIVE == A_NCE:
        La, k1a, k2a, k3a = nce_epilogue(ly, py, c, S, A1, EA, h, EXACT)
    if ACTIVE == A_NFL:
        La, k1a, k2a, k3a = nfl_epilogue(ly, py, c, S, A1, EA, h, EXACT)
    Lb = zero
    k1b = zero
    k2b = zero
    k3b = zero
    if PASSIVE == P_NNCE:
        Lb, k1b, k2b, k3b = nnce_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_NNFL:
        Lb, k1b, k2b, k3b = nnfl_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_MAE:
        Lb, k1b, k2b, k3b = mae_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_RCE:
        Lb, k1b, k2b, k3b = rce_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_GCE:
        Lb, k1b, k2b, k3b = gce_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_AGCE:
        Lb, k1b, k2b, k3b = agce_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_AUL:
        Lb, k1b, k2b, k3b = aul_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_AEL:
        Lb, k1b, k2b, k3b = ael_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_AMSE:
        Lb, k1b, k2b, k3b = amse_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    if PASSIVE == P_LS:
        Lb, k1b, k2b, k3b = ls_epilogue(ly, py, c, B1, EB, BC, h, EXACT)
    # 0, or NaN in a NaN row (s is NaN there, see stats1_block): added to every output,
    # since clamps (tl.maximum drops a NaN) and constant coefficients would not carry it.
    nan_row = log_s * 0.0
    L = alpha * La + beta * Lb + nan_row
    c1 = alpha * k1a + beta * k1b + nan_row
    c2a = alpha * k2a + nan_row
    # z-loss, zl lse^2 (lse = m + log s; the LS term carries its label weight BC = w_y, so
    # the z-loss gets it too): d/dz_j = 2 zl lse p_j, a p-coefficient. A loss without it
    # computes nothing (a compile-time flag: a runtime branch here made ptxas spill).
    if Z_LOSS:
        zl = hyper(h, H_Z_LOSS)
        lse = m + log_s
        zs = zl * z_loss_weight(BC, PASSIVE)
        L += zs * lse * lse
        c2a += 2.0 * zs * lse
    return (L, c1, c2a, beta * k2b + nan_row, alpha * k3a + nan_row,
            beta * k3b + nan_row, log_s)
