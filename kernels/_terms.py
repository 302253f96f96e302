"""The loss family's math as Triton device functions (no kernels, no launches).

Every loss is ``alpha * ACTIVE + beta * PASSIVE`` and is computed in three steps:

1. stats1 over the row (online): ``m = max z``, ``s = sum exp(z - m)``,
   ``d = sum (z - m)``, ``c = #present`` (present: ``z > -inf``). Hence
   ``lse = m + log s`` and NCE's normalizer ``S = sum_k l_k = d - c log s``.
2. stats2 over the row, once lse is known, for the terms that need it
   (NFL, NNCE, NNFL, RCE): per-element values ``a1, ea, b1, eb`` summed to
   ``A1, EA, B1, EB`` (see ``elementwise``).
3. the gradient ``dL/dz_j = c1 [j == y] + (c2a p_j + c3a ea_j) + (c2b p_j + c3b eb_j)`` with
   row scalars from ``epilogue``. ``ea``/``eb`` are the active/passive terms'
   elementwise masks or weights, the same values that stats2 summed.

Derivation (one term at a time; ``dl_k/dz_j = [k == j] - p_j``, ``dp_y/dz_j = p_y([j==y] - p_j)``):
- CE ``-l_y``:                 c1 = -1, c2 = 1.
- FL ``-w_y l_y``, ``w = (1-p)^g`` detached: c1 = -u_y, c2 = u_y, with ``u = w``
  (detached) or ``u = w + l p dw/dp = w - g l p w / (1 - p)`` (exact derivative).
- NCE ``l_y / S``:           c1 = 1/S, c2 = -1/S + l_y c / S^2, c3 = -l_y / S^2, e = present.
- NFL ``w_y l_y / T``, ``T = sum_k w_k l_k``: dT/dz_j = u_j - p_j U, so
  c1 = u_y/T, c2 = -u_y/T + w_y l_y U / T^2, c3 = -w_y l_y / T^2, e = u (present).
- NNCE ``1 - v_y / V``, ``v = A + max(l, log p_min)``, ``m_k = [l_k >= log p_min]``:
  c1 = -m_y/V, c2 = m_y/V - v_y M / V^2, c3 = v_y / V^2, e = m.
- NNFL ``1 - (A' - FL_y) / (c A' - sum FL)``, ``FL = -w(lc) lc``, ``lc = max(l, log p_min)``:
  with ``N = A' - FL_y``, ``D = c A' - sum FL``, ``e = m u``, ``E = sum e``:
  c1 = -m_y u_y / D, c2 = m_y u_y / D - N E / D^2, c3 = N / D^2.
  D is summed as ``sum_k (A' - FL_k)`` over present classes: every term is >= 0, so
  no cancellation (``K A' - sum FL`` loses ~eps K A' in float32 when many classes are
  clamped); absent classes have FL = A' and contribute 0 either way.
- RCE ``A4 sum_{k != y, present} max(p_k, 1e-7)``: with ``e = p [k != y][p >= 1e-7]``,
  ``Q = sum e``: c2 = -A4 Q, c3 = A4. The gradient of a class in Q is A4 p_j (1 - Q);
  when Q is near 1 we take Q = 1 - sum of the other p's, which float32 resolves.
- MAE, GCE, AGCE, AUL, AEL depend on p_y alone: ``L = f(p_y)`` gives
  c1 = f'(p_y) p_y, c2 = -c1 (GCE's clamp zeroes both where p_y < 1e-7).
"""
import triton
import triton.language as tl

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
NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _pow(x, e):
    """x**e for x >= 0 (0**0 = 1, 0**e = 0 for e > 0)."""
    xs = tl.where(x > 0, x, 1.0)
    return tl.where(x > 0, tl.exp(e * tl.log(xs)), tl.where(e == 0, 1.0, 0.0))


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
def load_row(z_ptr, base, cols, s_k, K, DT: tl.constexpr):
    """Columns [cols] of one row in the compute dtype; padding columns read as absent."""
    z = tl.load(z_ptr + base + cols.to(tl.int64) * s_k, mask=cols < K, other=NEG_INF)
    return z.to(DT)


@triton.jit
def stats1_block(z):
    """(max, sum exp(z - max), sum (z - max), #present) of one block; absent entries skipped.

    Non-finite logits: ``s`` masks only the absent entries (``z == -inf``), not
    ``z > -inf``, so a NaN (for which every comparison is false) or a ``+inf`` (then
    ``m = +inf`` and ``inf - inf``) makes ``s`` NaN, and with it ``log s``, every ``l``,
    ``p``, the loss and the gradient of the row: a NaN or ``+inf`` anywhere in a row gives
    a NaN row, as ``torch.nn.functional.cross_entropy`` does (``tl.max`` may drop a NaN
    on the GPU; ``s`` does not). The merges and the split/shard partial combines carry
    a NaN ``s`` through.
    """
    present = z > NEG_INF
    m = tl.max(z, 0)
    ms = tl.where(m > NEG_INF, m, 0.0)
    s = tl.sum(tl.where(z == NEG_INF, 0.0, tl.exp(z - ms)), 0)
    d = tl.sum(tl.where(present, z - ms, 0.0), 0)
    c = tl.sum(tl.where(present, 1.0, 0.0).to(z.dtype), 0)
    return m, s, d, c


@triton.jit
def merge_stats1(m1, s1, d1, c1, m2, s2, d2, c2):
    """Combine two stats1 tuples (each relative to its own max) into one."""
    m = tl.maximum(m1, m2)
    ms = tl.where(m > NEG_INF, m, 0.0)
    m1s = tl.where(m1 > NEG_INF, m1, ms)  # an empty side has s = d = c = 0
    m2s = tl.where(m2 > NEG_INF, m2, ms)
    s = s1 * tl.exp(m1s - ms) + s2 * tl.exp(m2s - ms)
    d = d1 + c1 * (m1s - ms) + d2 + c2 * (m2s - ms)
    return m, s, d, c1 + c2


@triton.jit
def elementwise(z, cols, y, m, log_s, h_ptr, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr,
                EXACT: tl.constexpr):
    """Per-element (a1, ea, b1, eb, bc, p): what stats2 sums, what the gradient weights.

    a1: NFL's w*l.  ea: the active term's e (present for NCE, u for NFL).
    b1: NNCE's v, NNFL's A' - FL, RCE's max(p, 1e-7).  eb: the passive term's e.
    bc: RCE's complement of eb (p where eb is 0), so that 1 - Q = sum(bc) is exact.
    """
    present = z > NEG_INF
    # (z - m) - log s, not z - lse: exact for the max entry, and no absolute error
    # of eps * |lse| for exp() to amplify (it matters for logits of large magnitude).
    l = (z - m) - log_s
    p = tl.where(present, tl.exp(l), 0.0)  # (a NaN row's gradient: epilogue's nan_row)
    zero = tl.zeros_like(z)
    a1 = zero
    ea = zero
    b1 = zero
    eb = zero
    bc = zero
    if ACTIVE == A_NCE:
        ea = tl.where(present, 1.0, 0.0).to(z.dtype)
    if ACTIVE == A_NFL:
        gamma = tl.load(h_ptr + H_GAMMA)
        w = _pow(1.0 - p, gamma)
        a1 = tl.where(present, w * l, 0.0)
        ea = tl.where(present, _focal_u(l, p, w, gamma, EXACT), 0.0)
    if PASSIVE == P_NNCE:
        log_pmin = tl.load(h_ptr + H_LOG_PMIN)
        b1 = tl.load(h_ptr + H_A_NNCE) + tl.maximum(l, log_pmin)
        eb = tl.where(l >= log_pmin, 1.0, 0.0).to(z.dtype)
    if PASSIVE == P_NNFL:
        log_pmin = tl.load(h_ptr + H_LOG_PMIN)
        gamma = tl.load(h_ptr + H_GAMMA)
        lc = tl.maximum(l, log_pmin)
        pc = tl.exp(lc)
        w = _pow(1.0 - pc, gamma)
        # A' - FL_k >= 0, exactly 0 where clamped (computing it there would leave a
        # rounding residue of ~eps A' per clamped class).
        b1 = tl.where(l >= log_pmin, tl.load(h_ptr + H_A_NNFL) + w * lc, 0.0)
        eb = tl.where(l >= log_pmin, _focal_u(l, p, w, gamma, EXACT), 0.0)
    if PASSIVE == P_RCE:
        floor = tl.load(h_ptr + H_P_FLOOR)
        other = present & (cols != y)
        b1 = tl.where(other, tl.maximum(p, floor), 0.0)
        in_q = other & (p >= floor)
        eb = tl.where(in_q, p, 0.0)
        bc = tl.where(in_q, 0.0, p)
    return a1, ea, b1, eb, bc, p


@triton.jit
def epilogue(m, s, d, c, A1, EA, B1, EB, BC, zy, h_ptr, ACTIVE: tl.constexpr,
             PASSIVE: tl.constexpr, EXACT: tl.constexpr):
    """Per-row loss, gradient coefficients (c1, c2a, c2b, c3a, c3b) and log s from the row sums."""
    log_s = tl.log(s)
    ly = (zy - m) - log_s
    py = tl.exp(ly)
    alpha = tl.load(h_ptr + H_ALPHA)
    beta = tl.load(h_ptr + H_BETA)
    zero = tl.zeros_like(ly)  # not ly * 0.0: that is NaN where ly = -inf (CE = +inf is right)
    La = zero
    k1a = zero
    k2a = zero
    k3a = zero
    if ACTIVE == A_CE:
        La = -ly
        k1a = zero - 1.0
        k2a = zero + 1.0
    if ACTIVE == A_FL:
        gamma = tl.load(h_ptr + H_GAMMA)
        w = _pow(1.0 - py, gamma)
        u = _focal_u(ly, py, w, gamma, EXACT)
        La = -w * ly
        k1a = -u
        k2a = u
    if ACTIVE == A_NCE:
        S = d - c * log_s
        # ratios first: ly * c / S^2 overflows float32 for huge logits where (ly/S)(c/S) does not
        La = ly / S
        k1a = 1.0 / S
        k2a = -1.0 / S + La * (c / S)
        k3a = -La / S
    if ACTIVE == A_NFL:
        gamma = tl.load(h_ptr + H_GAMMA)
        wy = _pow(1.0 - py, gamma)
        uy = _focal_u(ly, py, wy, gamma, EXACT)
        num = wy * ly
        La = num / A1
        k1a = uy / A1
        k2a = -uy / A1 + La * (EA / A1)
        k3a = -La / A1
    Lb = zero
    k1b = zero
    k2b = zero
    k3b = zero
    if PASSIVE == P_NNCE:
        log_pmin = tl.load(h_ptr + H_LOG_PMIN)
        vy = tl.load(h_ptr + H_A_NNCE) + tl.maximum(ly, log_pmin)
        my = tl.where(ly >= log_pmin, 1.0, 0.0)
        r = vy / B1
        Lb = 1.0 - r
        k1b = -my / B1
        k2b = my / B1 - r * (EB / B1)
        k3b = r / B1
    if PASSIVE == P_NNFL:
        log_pmin = tl.load(h_ptr + H_LOG_PMIN)
        gamma = tl.load(h_ptr + H_GAMMA)
        a_nnfl = tl.load(h_ptr + H_A_NNFL)
        lcy = tl.maximum(ly, log_pmin)
        wy = _pow(1.0 - tl.exp(lcy), gamma)
        uy = tl.where(ly >= log_pmin, _focal_u(ly, py, wy, gamma, EXACT), 0.0)
        num = a_nnfl + wy * lcy
        den = B1
        r = num / den
        Lb = 1.0 - r
        k1b = -uy / den
        k2b = uy / den - r * (EB / den)
        k3b = r / den
    if PASSIVE == P_MAE:
        Lb = 1.0 - py
        k1b = -py
        k2b = py
    if PASSIVE == P_RCE:
        rce_a = tl.load(h_ptr + H_RCE_A)
        Lb = rce_a * B1
        # Q near 1 (a confident wrong class) is 1 - BC: no cancellation in 1 - Q.
        k2b = -rce_a * tl.where(EB > 0.5, 1.0 - BC, EB)
        k3b = zero + rce_a
    if PASSIVE == P_GCE:
        q = tl.load(h_ptr + H_Q)
        floor = tl.load(h_ptr + H_P_FLOOR)
        pq = _pow(tl.maximum(py, floor), q)
        Lb = (1.0 - pq) / q
        k1b = tl.where(py >= floor, -pq, 0.0)
        k2b = -k1b
    if PASSIVE == P_AGCE:
        q = tl.load(h_ptr + H_Q)
        a = tl.load(h_ptr + H_A)
        Lb = (tl.load(h_ptr + H_C_PASS) - _pow(a + py, q)) / q
        k1b = -_pow(a + py, q - 1.0) * py
        k2b = -k1b
    if PASSIVE == P_AUL:
        q = tl.load(h_ptr + H_Q)
        a = tl.load(h_ptr + H_A)
        Lb = (_pow(a - py, q) - tl.load(h_ptr + H_C_PASS)) / q
        k1b = -_pow(a - py, q - 1.0) * py
        k2b = -k1b
    if PASSIVE == P_AEL:
        a = tl.load(h_ptr + H_A)
        Lb = tl.exp(-py / a)
        k1b = -Lb / a * py
        k2b = -k1b
    # 0, or NaN in a NaN row (s is NaN there, see stats1_block): added to every output,
    # since clamps (tl.maximum drops a NaN) and constant coefficients would not carry it.
    nan_row = log_s * 0.0
    L = alpha * La + beta * Lb + nan_row
    c1 = alpha * k1a + beta * k1b + nan_row
    return (L, c1, alpha * k2a + nan_row, beta * k2b + nan_row, alpha * k3a + nan_row,
            beta * k3b + nan_row, log_s)
