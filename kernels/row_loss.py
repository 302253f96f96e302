"""Fused row-loss kernels: loss per row and, in the same launch, its gradient.

Three paths over the same device functions (kernels/_terms.py):
- single block: the row fits in one block; it is read from memory once, kept in
  registers for stats1, stats2 and the gradient.
- streaming: one program walks its row in blocks, up to three times (stats1,
  stats2, gradient), each thread keeping its own partial sums across the blocks; on
  the persistent grid of kernels/launch.py ``stream_grid`` the rows in flight fit in
  half the L2, so the re-reads are L2 hits.
- split row: for few, very long rows, each row is cut into chunks handled by
  separate programs; three launches (stats1 partials, stats2 partials, finish)
  each combine the previous launch's per-chunk partials of their row first.

The gradient's blocks are written without the label's terms and the label's column
after them (``_label_grad``, ``_store_label``): no label compare per element.

Rows are addressed as ``(n, :, d)`` of an ``(N, K, D)`` view, so 2-D logits
(D = 1), N-D logits and non-contiguous logits need no copy. Row and block starts are
int64, columns within a block int32.
Nothing here synchronises with the host: out-of-range labels give NaN rows.
"""
import triton
import triton.language as tl

from . import _codes as C
from ._codes import STATS1, STATS2
from ._terms import (
    NEG_INF,
    elementwise,
    epilogue,
    fast_exp,
    load_hyper,
    probs,
    softcap,
    softcap_grad,
    stats1_block,
)


S1 = tl.constexpr(STATS1)  # floats per stats1 partial (kernels/_codes.py)
S2 = tl.constexpr(STATS2)  # floats per stats2 partial

@triton.jit
def _aligned(x, VEC: tl.constexpr):
    """x, which the launcher checked is a multiple of VEC, written so the compiler sees it.

    VEC is the number of elements in 16 bytes when the rows are contiguous and every
    row start (and K) is a multiple of it, else 1. Triton only learns divisibility from
    arguments divisible by 16, so without this a row of K = 1000 bf16 logits, which
    does start on a 16-byte boundary, would be read with 2-byte loads.
    """
    return x // VEC * VEC


@triton.jit
def _row_base(row, D, s_n, s_d, VEC: tl.constexpr):
    """Offset of row ``(n, :, d)`` of an (N, K, D) view, for a flat row index n * D + d."""
    n = row // D
    return _aligned(n * s_n + (row - n * D) * s_d, VEC)


@triton.jit
def _row_start(t_ptr, row, D, s_n, s_d, ignore_index, VEC: tl.constexpr):
    """Row base offset, label and validity of one row."""
    base = _row_base(row, D, s_n, s_d, VEC)
    y = tl.load(t_ptr + row).to(tl.int64)
    return base, y, y != ignore_index


@triton.jit
def _row_label(w_ptr, den_ptr, z_ptr, zy_ptr, h, row, base, y, valid, s_k, K,
               HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, SHARDED: tl.constexpr,
               SOFTCAP: tl.constexpr, DT: tl.constexpr):
    """Label logit, label weight and gradient scale of one row (only the epilogue and the
    gradient need them: the streaming path reads them after its statistics passes, so
    they are not held in registers across those loops).

    SHARDED (class-parallel): the label logit and the row's class weight were
    gathered across ranks beforehand (zy_ptr, w_ptr hold one value per row) and the
    label is shard-local (it may fall outside [0, K)).
    """
    if SHARDED:
        zy = tl.load(zy_ptr + row).to(DT)
        zy = tl.where(zy > NEG_INF, zy, float("nan"))  # no rank holds the label: NaN
        wy = tl.load(w_ptr + row).to(DT)
    else:
        in_range = (y >= 0) & (y < K)
        ys = tl.where(in_range, y, 0)
        zy = tl.load(z_ptr + base + ys * s_k).to(DT)
        if SOFTCAP:
            zy = softcap(zy, h)
        # A label out of range or on an absent class: NaN for this sample (docs/semantics.md).
        zy = tl.where(in_range & (zy > NEG_INF), zy, float("nan"))
        wy = zy * 0.0 + 1.0
        if HAS_WEIGHT:
            wy = tl.load(w_ptr + ys).to(DT)
    scale = tl.where(valid, wy, 0.0)
    if MEAN:
        scale = scale / tl.load(den_ptr).to(DT)
    return zy, wy, scale


@triton.jit
def _tile(BLOCK_K: tl.constexpr, EPT: tl.constexpr):
    """Columns of a block relative to its start, as a (BLOCK_K // EPT, EPT) tile: each
    tile row is EPT consecutive columns (16 bytes of logits), held by one thread, so a
    reduction along axis 1 stays in the thread (no shuffle, no barrier). int32: only
    the row and block starts are int64."""
    return tl.arange(0, BLOCK_K // EPT)[:, None] * EPT + tl.arange(0, EPT)[None, :]


@triton.jit
def _lane_tile(BLOCK_K: tl.constexpr, EPT: tl.constexpr, REPS: tl.constexpr):
    """``_tile``'s columns as a (REPS, BLOCK_K // (EPT REPS), EPT) tile: with REPS tile rows
    per thread (kernels/launch.py ``_columns``), a thread's rows are the ones it holds
    along axis 0, so that reducing axes 2 and 0 stays in the thread and the thread keeps
    one lane of online statistics, not one per tile row (``_chunk_stats1``: one rescale
    per block per thread). Any REPS >= 1 that divides the rows gives the same columns."""
    R: tl.constexpr = BLOCK_K // EPT // REPS
    return (tl.arange(0, REPS)[:, None, None] * (R * EPT) + tl.arange(0, R)[None, :, None] * EPT
            + tl.arange(0, EPT)[None, None, :])


@triton.jit
def _ptrs(ptr, cols, s_k, UNIT_K: tl.constexpr):
    """Pointers to columns ``cols`` (block-relative) of a block that starts at ``ptr``;
    32-bit column offsets when the column stride is 1, else 64-bit (cols * s_k)."""
    if UNIT_K:
        return ptr + cols
    else:
        return ptr + cols.to(tl.int64) * s_k


@triton.jit
def _load_block(z_ptr, cols, s_k, n, h, SOFTCAP: tl.constexpr, UNIT_K: tl.constexpr,
                DT: tl.constexpr, MASKED: tl.constexpr = True):
    """The first ``n`` columns of the block at ``z_ptr`` in the compute dtype (capped with
    SOFTCAP, kernels/_terms.py ``softcap``); columns at or past ``n`` read as absent (-inf).
    MASKED false: a whole block (``n`` unused), read without a mask (no predicate and no
    fill value per register: ``_first_block_end``)."""
    if MASKED:
        z = tl.load(_ptrs(z_ptr, cols, s_k, UNIT_K), mask=cols < n, other=NEG_INF).to(DT)
    else:
        z = tl.load(_ptrs(z_ptr, cols, s_k, UNIT_K)).to(DT)
    if SOFTCAP:
        z = softcap(z, h)
    return z


@triton.jit
def _block_label(y, start, width):
    """The label relative to a block of ``width`` columns starting at column ``start``,
    int32; -1 when the label is not in the block (an ignored or out-of-range label is in
    none)."""
    rel = y - start
    return tl.where((rel >= 0) & (rel < width), rel, -1).to(tl.int32)


@triton.constexpr_function
def _peeled(dtype):
    """Whether the passes over logits of ``dtype`` take their first block apart
    (``_first_block_end``): 2-byte logits. A float32 row's passes kept the masked loop:
    with the first block apart as well, ptxas held NCE+RCE's and NFL+AMSE's streaming
    kernels at 64 registers and spilled (4 and 12 bytes, sm_90)."""
    return dtype.primitive_bitwidth == 16


@triton.jit
def _first_block_end(lo, hi, BLOCK_K: tl.constexpr, VEC: tl.constexpr):
    """Where the first block of columns [lo, hi) ends: the passes over a chunk take its
    ``(hi - lo) % BLOCK_K`` leftover columns (a whole block when there are none, at most
    ``hi``) first, with a mask, and then whole blocks without one, so that only that
    first block pays for masked loads and stores. The leftover is a multiple of VEC
    (K, the chunk and the block are), written so that the compiler sees it (``_aligned``)
    and keeps the following blocks' loads 16 bytes wide."""
    r = (hi - lo) % BLOCK_K
    return tl.minimum(lo + _aligned(tl.where(r == 0, BLOCK_K, r), VEC), hi)


@triton.jit
def _stats1_step(m, s, d, c, z):
    """One block's update of the per-lane online stats1 (``_chunk_stats1``), z of shape
    (REPS, R, EPT) (``_lane_tile``)."""
    mn = tl.maximum(m, tl.max(tl.max(z, 2), 0))
    ms = tl.where(mn > NEG_INF, mn, 0.0)
    mo = tl.where(m > NEG_INF, m, ms)  # a lane with nothing yet: s = d = c = 0
    t = z - ms[None, :, None]
    # present from z, not from t: z - ms overflows to -inf for logits of opposite signs
    # near the float32 limit (+-3e38), and whether it does would then depend on the order
    # in which the lane saw them
    present = z > NEG_INF
    s = s * fast_exp(mo - ms) + tl.sum(tl.sum(fast_exp(t), 2), 0)
    d = d + c * (mo - ms) + tl.sum(tl.sum(tl.where(present, t, 0.0), 2), 0)
    c = c + tl.sum(tl.sum(tl.where(present, 1.0, 0.0), 2), 0)
    return mn, s, d, c


@triton.jit
def _chunk_stats1(z_ptr, base, s_k, lo, hi, h, SOFTCAP: tl.constexpr,
                  BLOCK_K: tl.constexpr, EPT: tl.constexpr, REPS: tl.constexpr,
                  VEC: tl.constexpr, UNIT_K: tl.constexpr, DT: tl.constexpr):
    """stats1 (max, sum exp(z - max), sum (z - max), #present) of columns [lo, hi).

    Online per thread (``_lane_tile``): each thread keeps the stats of its own columns
    across the blocks, merged once at the end (one cross-warp reduction per statistic
    per chunk, not per block). The rule of kernels/_terms.py
    ``stats1_block`` holds: absent (-inf) entries are skipped, a NaN or +inf makes s NaN.
    Absent entries need no mask in s: their exp(-inf - ms) is 0 whenever ms is not -inf,
    and ms (the running max, 0 while a lane has only absent entries) never is; a +inf
    gives exp(inf - inf) = NaN, a NaN exp(NaN). exp is exp2 (``fast_exp``): a term under
    2^-126 of the row's largest flushes to 0, which s (at least 1) does not see.
    (A loss whose terms read neither d nor c, CE for one, has them removed by the
    compiler.)
    """
    cols = _lane_tile(BLOCK_K, EPT, REPS)
    R: tl.constexpr = BLOCK_K // EPT // REPS
    m = tl.full((R,), NEG_INF, DT)
    s = tl.zeros((R,), DT)
    d = tl.zeros((R,), DT)
    c = tl.zeros((R,), DT)
    PEEL: tl.constexpr = _peeled(z_ptr.dtype.element_ty)
    first = lo
    if PEEL:
        first = _first_block_end(lo, hi, BLOCK_K, VEC)
        z = _load_block(z_ptr + base + tl.cast(lo, tl.int64) * s_k, cols, s_k, first - lo,
                        h, SOFTCAP, UNIT_K, DT)
        m, s, d, c = _stats1_step(m, s, d, c, z)
    for start in range(first, hi, BLOCK_K):
        z = _load_block(z_ptr + base + tl.cast(start, tl.int64) * s_k, cols, s_k, hi - start,
                        h, SOFTCAP, UNIT_K, DT, not PEEL)
        m, s, d, c = _stats1_step(m, s, d, c, z)
    M = tl.max(m, 0)
    Ms = tl.where(M > NEG_INF, M, 0.0)
    mo = tl.where(m > NEG_INF, m, Ms)
    return (M, tl.sum(s * fast_exp(mo - Ms), 0), tl.sum(d + c * (mo - Ms), 0),
            tl.sum(c, 0))


@triton.jit
def _stats2_step(A1, EA, B1, EB, BC, z, cols, y, start, width, m, log_s, h,
                 ACTIVE: tl.constexpr, PASSIVE: tl.constexpr, EXACT: tl.constexpr):
    """One block's update of the per-tile-row stats2 sums (``_chunk_stats2``): the block
    of ``width`` columns from column ``start``."""
    l, p = probs(z, m, log_s)
    a1, ea, b1, eb, bc = elementwise(z, l, p, cols, _block_label(y, start, width), start,
                                     h, ACTIVE, PASSIVE, EXACT)
    return (A1 + tl.sum(a1, 1), EA + tl.sum(ea, 1), B1 + tl.sum(b1, 1),
            EB + tl.sum(_eb_summand(eb, p, ACTIVE, PASSIVE), 1),
            BC + tl.sum(bc, 1))


@triton.jit
def _chunk_stats2(z_ptr, base, s_k, lo, hi, y, m, log_s, h, ACTIVE: tl.constexpr,
                  PASSIVE: tl.constexpr, EXACT: tl.constexpr, SOFTCAP: tl.constexpr,
                  BLOCK_K: tl.constexpr, EPT: tl.constexpr, VEC: tl.constexpr,
                  UNIT_K: tl.constexpr, DT: tl.constexpr):
    """The lse-dependent sums (A1, EA, B1, EB, BC) of columns [lo, hi), accumulated per
    tile row and reduced across the block once at the end; the first block masked, the
    others whole (``_first_block_end``)."""
    cols = _tile(BLOCK_K, EPT)
    R: tl.constexpr = BLOCK_K // EPT
    A1 = tl.zeros((R,), DT)
    EA = tl.zeros((R,), DT)
    B1 = tl.zeros((R,), DT)
    EB = tl.zeros((R,), DT)
    BC = tl.zeros((R,), DT)
    PEEL: tl.constexpr = _peeled(z_ptr.dtype.element_ty)
    first = lo
    if PEEL:
        first = _first_block_end(lo, hi, BLOCK_K, VEC)
        z = _load_block(z_ptr + base + tl.cast(lo, tl.int64) * s_k, cols, s_k, first - lo,
                        h, SOFTCAP, UNIT_K, DT)
        A1, EA, B1, EB, BC = _stats2_step(A1, EA, B1, EB, BC, z, cols, y, lo, first - lo, m,
                                          log_s, h, ACTIVE, PASSIVE, EXACT)
    for start in range(first, hi, BLOCK_K):
        z = _load_block(z_ptr + base + tl.cast(start, tl.int64) * s_k, cols, s_k, hi - start,
                        h, SOFTCAP, UNIT_K, DT, not PEEL)
        A1, EA, B1, EB, BC = _stats2_step(A1, EA, B1, EB, BC, z, cols, y, start, BLOCK_K, m,
                                          log_s, h, ACTIVE, PASSIVE, EXACT)
    return tl.sum(A1, 0), tl.sum(EA, 0), tl.sum(B1, 0), tl.sum(EB, 0), tl.sum(BC, 0)


# (HAS_EA, HAS_EB, ONE_P, SELECT_B, PRESENT_A) of every (active, passive) pair, from the table
# (kernels/_codes.py): whether the active / passive term has an elementwise weight e (a
# term that depends on p_y alone has none), whether the two share one p-coefficient
# (``one_p_coefficient``), whether the passive term's part is p times a select
# (``selects_p``), and whether the active term's e is the present-class indicator
# (``e_is_present``)
_E_PARTS = tl.constexpr({(a, p): C.has_elementwise(a, p) + (C.one_p_coefficient(a, p),
                                                            C.selects_p(a, p),
                                                            C.e_is_present(a, p))
                         for a in C.ACTIVE_TERMS for p in C.PASSIVE_TERMS})


@triton.constexpr_function
def _e_parts(active, passive):
    """(HAS_EA, HAS_EB, ONE_P, SELECT_B, PRESENT_A) of a loss (``_E_PARTS``), at compile
    time."""
    return _E_PARTS.value[(active, passive)]


@triton.jit
def _eb_summand(eb, p, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr):
    """What stats2 sums into EB: eb, or p where eb is 1 if the passive term is ``p_select``
    (its e is its set's indicator, EB the set's p mass)."""
    if _e_parts(ACTIVE, PASSIVE)[3]:
        return tl.where(eb != 0, p, 0.0)  # not p * eb: p * 0 is not 0 to the compiler
    else:
        return eb


@triton.jit
def _grad_coefs(c2a, c2b, c3b, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr):
    """The gradient's coefficients as ``_grad_combine`` uses them: a term without an
    elementwise weight e has its p-coefficient folded into the other's, and so does a
    pair of terms without cancellation inside either (``_e_parts`` ONE_P: c2a holds
    both). SELECT_B (the passive term's e is p on a set, kernels/_codes.py
    ``p_select``): the active term's p-coefficient goes into both of the passive
    term's, c2b (off the set) and c3b (on it)."""
    HAS_EA: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[0]
    HAS_EB: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[1]
    ONE_P: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[2]
    SELECT_B: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[3]
    if SELECT_B:
        c3b = c3b + c2a
        c2b = c2b + c2a
    elif not HAS_EA:
        c2b = c2b + c2a
    elif (not HAS_EB) or ONE_P:
        c2a = c2a + c2b
    return c2a, c2b, c3b


@triton.jit
def _grad_combine(cols, y, p, ea, eb, scale, c1, c2a, c2b, c3a, c3b, z, h,
                  ACTIVE: tl.constexpr, PASSIVE: tl.constexpr, SOFTCAP: tl.constexpr,
                  LABEL_COLUMN: tl.constexpr = True, HELD: tl.constexpr = False,
                  LEAN: tl.constexpr = False):
    """The gradient ``c1 [j == y] + (c2a p_j + c3a ea_j) + (c2b p_j + c3b eb_j)`` times the
    row's scale, with the coefficients of ``_grad_coefs``. The p- and e-parts of a
    term are added first, so that a term whose parts nearly cancel (``separate_p``)
    does so before the other term is added (ONE_P: one p part, then both e parts).
    SELECT_B: the passive part is ``p_j (c3b if eb_j else c2b)`` (eb: its set's
    indicator, kernels/_codes.py ``p_select``), both coefficients holding the active
    term's p part: one select and one FFMA per element, no cancellation. HELD (the
    single path, whose row stays in registers across its reductions): the same value as
    ``(p_j on the set) c3b + (p_j off it) c2b`` (one of the two is 0; RCE's stats2 sums
    both anyway): held as floats, where the select's mask would be held as predicates,
    which ptxas then spills to registers and restores (NCE+RCE at K = 8192: 936
    instructions per thread instead of 794, sm_90). LEAN (with HELD: the launch policy
    caps the registers, kernels/launch.py ``REGISTER_CAP``): an active term's
    present-class indicator (``e_present``, NCE) is taken from the logits again, as
    ``z != -inf``, not held: stats1's ``z > -inf`` would be the same value to the
    compiler, which would hold its predicates across the reductions and ptxas spill
    them to registers (a NaN logit makes the row NaN either way). NCE+RCE in one block
    of 8 warps: 1462 -> 1345 instructions per thread at the cap of 128 registers. Not
    by default: with 16 warps the held float is cheaper (NCE+RCE 794 -> 841).

    LABEL_COLUMN (the label's column, ``_label_grad``): c1 is added, and the scale
    multiplies the sum last, so that ``c1 + c2 p_y``, which cancels to about ``1 - p_y``
    on a confident row, cancels before it is scaled. Otherwise (every other column,
    written without a label compare): no c1, and the coefficients come already
    multiplied by the scale (``_scaled_coefs``: one multiply per element fewer; each
    column's terms keep their relative accuracy).

    A term without an elementwise weight e (kernels/_terms.py ``elementwise`` returns a
    constant zero for it) skips ``c3 * e`` (``c3 * 0`` is not folded by the compiler, an
    IEEE multiply: two instructions per element); every other term, a new one included,
    computes it. c3 of a term without e is 0, or NaN in a NaN row, which the folded c2
    carries too.
    """
    HAS_EA: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[0]
    HAS_EB: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[1]
    ONE_P: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[2]
    SELECT_B: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[3]
    PRESENT_A: tl.constexpr = _e_parts(ACTIVE, PASSIVE)[4]
    if LABEL_COLUMN:
        g = tl.where(cols == y, c1, 0.0)
    else:
        g = tl.full(p.shape, -0.0, p.dtype)  # -0 + x is x: the compiler drops the add
    if HELD and LEAN and PRESENT_A:
        ga = tl.where(z != NEG_INF, c3a, 0.0)
    else:
        ga = c3a * ea
    if SELECT_B:
        if HELD:
            gb = tl.where(eb != 0, p, 0.0) * c3b + tl.where(eb != 0, 0.0, p) * c2b
        else:
            gb = p * tl.where(eb != 0, c3b, c2b)
        if HAS_EA:
            g += ga + gb
        else:
            g += gb
    elif ONE_P:
        g += c2a * p + ga + c3b * eb
    elif HAS_EA:
        g += c2a * p + ga
        if HAS_EB:
            g += c2b * p + c3b * eb
    elif HAS_EB:
        g += c2b * p + c3b * eb
    else:
        g += c2b * p
    if SOFTCAP:
        g = softcap_grad(g, z, h)  # the chain rule through the cap, at the capped z
    if LABEL_COLUMN:
        g = g * scale
    return g


@triton.jit
def _scaled_coefs(scale, c2a, c2b, c3a, c3b):
    """The coefficients of the columns other than the label's, times the row's scale
    (``_grad_combine`` LABEL_COLUMN false)."""
    return c2a * scale, c2b * scale, c3a * scale, c3b * scale


@triton.jit
def _label_grad(zy, m, log_s, y, scale, c1, c2a, c2b, c3a, c3b, h, ACTIVE: tl.constexpr,
                PASSIVE: tl.constexpr, EXACT: tl.constexpr, SOFTCAP: tl.constexpr,
                DT: tl.constexpr):
    """The gradient of the label's column (a 1-element tensor), from its logit ``zy``
    with the formulas of a block's label column. Computed before the other columns are
    written (it then holds one register across their loop instead of the unscaled
    coefficients) and stored after them (``_store_label``)."""
    col = tl.zeros((1,), tl.int32)  # the label's column, relative to itself
    zv = tl.zeros((1,), DT) + zy
    l, p = probs(zv, m, log_s)
    a1, ea, b1, eb, bc = elementwise(zv, l, p, col, col, y, h, ACTIVE, PASSIVE, EXACT)
    return _grad_combine(col, col, p, ea, eb, scale, c1, c2a, c2b, c3a, c3b, zv, h, ACTIVE,
                         PASSIVE, SOFTCAP)


@triton.jit
def _store_label(g_ptr, gbase, g_k, y, gy):
    """Write the label column's gradient ``gy`` (``_label_grad``) over what the block loop
    wrote there (without the label's terms: ``_grad_combine`` LABEL_COLUMN false); the
    barrier orders the two writes, which different threads of the program may make."""
    tl.debug_barrier()
    col = tl.zeros((1,), tl.int32)
    tl.store(g_ptr + gbase + y * g_k + col, gy.to(g_ptr.dtype.element_ty))


@triton.jit
def _grad_block(z_ptr, g_ptr, base, gbase, s_k, g_k, start, n, cols, m, log_s, scale, c1, c2a,
                c2b, c3a, c3b, h, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr,
                EXACT: tl.constexpr, SOFTCAP: tl.constexpr, UNIT_K: tl.constexpr,
                UNIT_GK: tl.constexpr, DT: tl.constexpr, MASKED: tl.constexpr):
    """The gradient of the ``n`` columns of the block at column ``start``, as if none were
    the label's (``_chunk_grad``), with scaled coefficients; MASKED false: a whole block,
    read and written without masks."""
    nolabel = tl.full((), -1, tl.int32)
    z = _load_block(z_ptr + base + tl.cast(start, tl.int64) * s_k, cols, s_k, n, h, SOFTCAP,
                    UNIT_K, DT, MASKED)
    l, p = probs(z, m, log_s)
    a1, ea, b1, eb, bc = elementwise(z, l, p, cols, nolabel, start, h, ACTIVE, PASSIVE,
                                     EXACT)
    g = _grad_combine(cols, nolabel, p, ea, eb, scale, c1, c2a, c2b, c3a, c3b, z, h,
                      ACTIVE, PASSIVE, SOFTCAP, False)
    g_ptrs = _ptrs(g_ptr + gbase + tl.cast(start, tl.int64) * g_k, cols, g_k, UNIT_GK)
    if MASKED:
        tl.store(g_ptrs, g.to(g_ptr.dtype.element_ty), mask=cols < n)
    else:
        tl.store(g_ptrs, g.to(g_ptr.dtype.element_ty))


@triton.jit
def _chunk_grad(z_ptr, g_ptr, base, gbase, s_k, g_k, lo, hi, y, zy, m, log_s, valid, scale,
                c1, c2a, c2b, c3a, c3b, h, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr,
                EXACT: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_K: tl.constexpr,
                EPT: tl.constexpr, VEC: tl.constexpr, UNIT_K: tl.constexpr,
                UNIT_GK: tl.constexpr, DT: tl.constexpr):
    """The gradient of columns [lo, hi); exactly 0 on an ignored row (whatever its
    logits: that row's loop stores zeros and reads nothing).

    The blocks are written as if no column were the label's: no label compare per
    element (two instructions), and the label-relative parts of a term (RCE's and AMSE's
    ``k != y``, label smoothing's ``w_y``) see none. Then, when the label is in [lo, hi),
    its column is written again (``_store_label``) with the value ``_label_grad``
    computed before the loop from its logit ``zy`` (read before the gradient may
    overwrite the logits in place; capped with SOFTCAP; NaN where the label is absent,
    as the whole row then is), with the same formulas as a block's label column. The
    other columns' coefficients are multiplied by the scale once, before the loop
    (``_scaled_coefs``).
    """
    cols = _tile(BLOCK_K, EPT)
    if valid:
        c2a, c2b, c3b = _grad_coefs(c2a, c2b, c3b, ACTIVE, PASSIVE)
        gy = _label_grad(zy, m, log_s, y, scale, c1, c2a, c2b, c3a, c3b, h, ACTIVE, PASSIVE,
                         EXACT, SOFTCAP, DT)
        c2a, c2b, c3a, c3b = _scaled_coefs(scale, c2a, c2b, c3a, c3b)
        PEEL: tl.constexpr = _peeled(z_ptr.dtype.element_ty)
        first = lo
        if PEEL:
            first = _first_block_end(lo, hi, BLOCK_K, VEC)
            _grad_block(z_ptr, g_ptr, base, gbase, s_k, g_k, lo, first - lo, cols, m, log_s,
                        scale, c1, c2a, c2b, c3a, c3b, h, ACTIVE, PASSIVE, EXACT, SOFTCAP,
                        UNIT_K, UNIT_GK, DT, True)
        for start in range(first, hi, BLOCK_K):
            _grad_block(z_ptr, g_ptr, base, gbase, s_k, g_k, start, hi - start, cols, m, log_s,
                        scale, c1, c2a, c2b, c3a, c3b, h, ACTIVE, PASSIVE, EXACT, SOFTCAP,
                        UNIT_K, UNIT_GK, DT, not PEEL)
        if (y >= lo) & (y < hi):
            _store_label(g_ptr, gbase, g_k, y, gy)
    else:
        zero = tl.zeros((BLOCK_K // EPT, EPT), g_ptr.dtype.element_ty)
        for start in range(lo, hi, BLOCK_K):
            tl.store(_ptrs(g_ptr + gbase + tl.cast(start, tl.int64) * g_k, cols, g_k, UNIT_GK),
                     zero, mask=cols < hi - start)


@triton.jit
def row_loss_kernel(z_ptr, t_ptr, w_ptr, h_ptr, den_ptr, loss_ptr, g_ptr, lse_ptr,
                    K, D, s_n, s_k, s_d, g_n, g_k, g_d, ignore_index, ROWS,
                    ACTIVE: tl.constexpr, PASSIVE: tl.constexpr, EXACT: tl.constexpr,
                    HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                    SINGLE: tl.constexpr, NEEDS2: tl.constexpr, BLOCK_K: tl.constexpr,
                    PERSISTENT: tl.constexpr, SOFTCAP: tl.constexpr, STORE_LSE: tl.constexpr,
                    Z_LOSS: tl.constexpr, VEC: tl.constexpr, EPT: tl.constexpr,
                    REPS: tl.constexpr, UNIT_K: tl.constexpr, UNIT_GK: tl.constexpr,
                    DT: tl.constexpr, LEAN: tl.constexpr = False):
    """Single-block or streaming path: one program per row, or, PERSISTENT, a grid of
    fewer programs that take rows ``pid, pid + grid, ...``: that bounds the rows being
    streamed at once, hence the bytes the streaming path's re-reads need to find in L2
    (kernels/launch.py ``LaunchConfig.programs_per_sm``). NEEDS2: the loss has
    lse-dependent sums (kernels/_codes.py needs_stats2), so the streaming path makes a
    second pass over the row."""
    K = _aligned(K, VEC)
    row = tl.program_id(0).to(tl.int64)
    if PERSISTENT:
        grid = tl.num_programs(0)
        for i in range(0, tl.cdiv(ROWS - tl.program_id(0), grid)):
            _one_row(row + i * grid, z_ptr, t_ptr, w_ptr, h_ptr, den_ptr, loss_ptr, g_ptr,
                     lse_ptr, K, D, s_n, s_k, s_d, g_n, g_k, g_d, ignore_index, ACTIVE, PASSIVE,
                     EXACT, HAS_WEIGHT, MEAN, COMPUTE_GRAD, SINGLE, NEEDS2, BLOCK_K, SOFTCAP,
                     STORE_LSE, Z_LOSS, VEC, EPT, REPS, UNIT_K, UNIT_GK, DT, LEAN)
    else:
        _one_row(row, z_ptr, t_ptr, w_ptr, h_ptr, den_ptr, loss_ptr, g_ptr, lse_ptr, K, D, s_n,
                 s_k, s_d, g_n, g_k, g_d, ignore_index, ACTIVE, PASSIVE, EXACT, HAS_WEIGHT, MEAN,
                 COMPUTE_GRAD, SINGLE, NEEDS2, BLOCK_K, SOFTCAP, STORE_LSE, Z_LOSS, VEC, EPT,
                 REPS, UNIT_K, UNIT_GK, DT, LEAN)


@triton.jit
def _store_row(loss_ptr, lse_ptr, row, L, wy, m, log_s, valid, STORE_LSE: tl.constexpr):
    """The row's loss (weighted by its label's class weight) and, STORE_LSE, its lse; 0 on
    an ignored row."""
    tl.store(loss_ptr + row, tl.where(valid, L * wy, 0.0))
    if STORE_LSE:
        tl.store(lse_ptr + row, tl.where(valid, m + log_s, 0.0))


@triton.jit
def _one_row(row, z_ptr, t_ptr, w_ptr, h_ptr, den_ptr, loss_ptr, g_ptr, lse_ptr,
             K, D, s_n, s_k, s_d, g_n, g_k, g_d, ignore_index,
             ACTIVE: tl.constexpr, PASSIVE: tl.constexpr, EXACT: tl.constexpr,
             HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
             SINGLE: tl.constexpr, NEEDS2: tl.constexpr, BLOCK_K: tl.constexpr,
             SOFTCAP: tl.constexpr, STORE_LSE: tl.constexpr, Z_LOSS: tl.constexpr,
             VEC: tl.constexpr, EPT: tl.constexpr, REPS: tl.constexpr, UNIT_K: tl.constexpr,
             UNIT_GK: tl.constexpr, DT: tl.constexpr, LEAN: tl.constexpr):
    """Loss and gradient of one row (K already passed through _aligned). The constants
    are loaded once per row (``load_hyper``): once per program, they would hold registers
    across the persistent loop (sm_90: ANL-CE streaming 95 -> 123, occupancy 0.31 -> 0.25)."""
    h = load_hyper(h_ptr)
    base, y, valid = _row_start(t_ptr, row, D, s_n, s_d, ignore_index, VEC)
    if SINGLE:
        zy, wy, scale = _row_label(w_ptr, den_ptr, z_ptr, z_ptr, h, row, base, y, valid, s_k,
                                   K, HAS_WEIGHT, MEAN, False, SOFTCAP, DT)
        gbase = _row_base(row, D, g_n, g_d, VEC)
        cols = tl.arange(0, BLOCK_K)
        yb = _block_label(y, 0, K)
        z = _load_block(z_ptr + base, cols, s_k, K, h, SOFTCAP, UNIT_K, DT)
        m, s, d, c, e = stats1_block(z)
        log_s = tl.log(s)
        # l and p from what stats1 computed: p from the exponentials it summed, one
        # multiply per element, not an exp (``e * (1/s)``: two roundings, against the exp
        # of a rounded l); l = (z - m) - log s (kernels/_terms.py ``probs``) with stats1's
        # z - m (NaN everywhere in a row without a present class, as it is there)
        l = (z - tl.where(m > NEG_INF, m, 0.0)) - log_s
        p = e * (1.0 / s)
        a1, ea, b1, eb, bc = elementwise(z, l, p, cols, yb, 0, h, ACTIVE, PASSIVE, EXACT)
        L, c1, c2a, c2b, c3a, c3b, log_s = epilogue(m, s, d, c, tl.sum(a1, 0), tl.sum(ea, 0),
                                            tl.sum(b1, 0),
                                            tl.sum(_eb_summand(eb, p, ACTIVE, PASSIVE), 0),
                                            tl.sum(bc, 0), zy, h,
                                            ACTIVE, PASSIVE, EXACT, Z_LOSS)
        _store_row(loss_ptr, lse_ptr, row, L, wy, m, log_s, valid, STORE_LSE)
        if COMPUTE_GRAD:
            c2a, c2b, c3b = _grad_coefs(c2a, c2b, c3b, ACTIVE, PASSIVE)
            # the label's column is written on its own after the others (_label_grad,
            # _store_label): no label compare per element
            gy = _label_grad(zy, m, log_s, y, scale, c1, c2a, c2b, c3a, c3b, h, ACTIVE,
                             PASSIVE, EXACT, SOFTCAP, DT)
            c2a, c2b, c3a, c3b = _scaled_coefs(scale, c2a, c2b, c3a, c3b)
            g = _grad_combine(cols, yb, p, ea, eb, scale, c1, c2a, c2b, c3a, c3b, z, h,
                              ACTIVE, PASSIVE, SOFTCAP, False, True, LEAN)
            # exactly 0 on an ignored row, whatever its logits: two stores with disjoint
            # masks (a select per element was applied to the converted gradient, its
            # halves unpacked and packed again: ~2.5 instructions per element)
            g_ptrs = _ptrs(g_ptr + gbase, cols, g_k, UNIT_GK)
            n_valid = tl.where(valid, K, 0)  # the columns the gradient goes to: all or none
            tl.store(g_ptrs, g.to(g_ptr.dtype.element_ty), mask=cols < n_valid)
            tl.store(g_ptrs, tl.zeros_like(g).to(g_ptr.dtype.element_ty),
                     mask=cols < K - n_valid)
            if valid & (y >= 0) & (y < K):
                _store_label(g_ptr, gbase, g_k, y, gy)
    else:
        m, s, d, c = _chunk_stats1(z_ptr, base, s_k, 0, K, h, SOFTCAP, BLOCK_K, EPT, REPS,
                                   VEC, UNIT_K, DT)
        log_s = tl.log(s)
        A1 = tl.zeros((), DT)
        EA = tl.zeros((), DT)
        B1 = tl.zeros((), DT)
        EB = tl.zeros((), DT)
        BC = tl.zeros((), DT)
        if NEEDS2:
            A1, EA, B1, EB, BC = _chunk_stats2(z_ptr, base, s_k, 0, K, y, m, log_s, h,
                                               ACTIVE, PASSIVE, EXACT, SOFTCAP, BLOCK_K, EPT,
                                               VEC, UNIT_K, DT)
        # read before the gradient loop, which may overwrite the logits (in place)
        zy, wy, scale = _row_label(w_ptr, den_ptr, z_ptr, z_ptr, h, row, base, y, valid, s_k,
                                   K, HAS_WEIGHT, MEAN, False, SOFTCAP, DT)
        L, c1, c2a, c2b, c3a, c3b, log_s = epilogue(m, s, d, c, A1, EA, B1, EB, BC, zy, h,
                                            ACTIVE, PASSIVE, EXACT, Z_LOSS)
        # the row's outputs before the gradient loop: nothing of them is held across it
        _store_row(loss_ptr, lse_ptr, row, L, wy, m, log_s, valid, STORE_LSE)
        if COMPUTE_GRAD:
            gbase = _row_base(row, D, g_n, g_d, VEC)
            _chunk_grad(z_ptr, g_ptr, base, gbase, s_k, g_k, 0, K, y, zy, m, log_s, valid, scale,
                        c1, c2a, c2b, c3a, c3b, h, ACTIVE, PASSIVE, EXACT, SOFTCAP, BLOCK_K,
                        EPT, VEC, UNIT_K, UNIT_GK, DT)


# ---------------------------------------------------------------- split rows


@triton.jit
def _load_stats1_partials(part_ptr, row, P, P_BLOCK: tl.constexpr):
    """Combine the P per-chunk stats1 partials of a row (stored as m, s, d, c)."""
    i = tl.arange(0, P_BLOCK)
    ptr = part_ptr + (row * P + i) * S1
    pm = tl.load(ptr, mask=i < P, other=NEG_INF)
    ps = tl.load(ptr + 1, mask=i < P, other=0.0)
    pd = tl.load(ptr + 2, mask=i < P, other=0.0)
    pc = tl.load(ptr + 3, mask=i < P, other=0.0)
    m = tl.max(pm, 0)
    ms = tl.where(m > NEG_INF, m, 0.0)
    pms = tl.where(pm > NEG_INF, pm, ms)
    s = tl.sum(ps * tl.exp(pms - ms), 0)
    d = tl.sum(pd + pc * (pms - ms), 0)
    return m, s, d, tl.sum(pc, 0)


@triton.jit
def split_stats1_kernel(z_ptr, h_ptr, part_ptr, K, D, s_n, s_k, s_d, CHUNK,
                        SOFTCAP: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr, EPT: tl.constexpr,
                        REPS: tl.constexpr, UNIT_K: tl.constexpr, DT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    P = tl.num_programs(1)
    K = _aligned(K, VEC)
    h = load_hyper(h_ptr, SOFTCAP)  # the cap is the only constant stats1 reads
    base = _row_base(row, D, s_n, s_d, VEC)
    lo = pid * CHUNK
    m, s, d, c = _chunk_stats1(z_ptr, base, s_k, lo, tl.minimum(lo + CHUNK, K), h, SOFTCAP,
                               BLOCK_K, EPT, REPS, VEC, UNIT_K, DT)
    ptr = part_ptr + (row * P + pid) * S1
    tl.store(ptr, m)
    tl.store(ptr + 1, s)
    tl.store(ptr + 2, d)
    tl.store(ptr + 3, c)


@triton.jit
def split_stats2_kernel(z_ptr, t_ptr, h_ptr, part1_ptr, part2_ptr, K, D, s_n, s_k, s_d, CHUNK,
                        NPART1, ACTIVE: tl.constexpr, PASSIVE: tl.constexpr,
                        EXACT: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_K: tl.constexpr,
                        P_BLOCK: tl.constexpr,
                        VEC: tl.constexpr, EPT: tl.constexpr, UNIT_K: tl.constexpr,
                        DT: tl.constexpr):
    """stats2 partials of chunk pid; the row's NPART1 stats1 partials are combined first
    (NPART1 = number of chunks, or of ranks for class-parallel shards)."""
    row = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    P = tl.num_programs(1)
    K = _aligned(K, VEC)
    h = load_hyper(h_ptr)
    base = _row_base(row, D, s_n, s_d, VEC)
    y = tl.load(t_ptr + row).to(tl.int64)
    m, s, d, c = _load_stats1_partials(part1_ptr, row, NPART1, P_BLOCK)
    log_s = tl.log(s)
    lo = pid * CHUNK
    A1, EA, B1, EB, BC = _chunk_stats2(z_ptr, base, s_k, lo, tl.minimum(lo + CHUNK, K), y, m,
                                       log_s, h, ACTIVE, PASSIVE, EXACT, SOFTCAP, BLOCK_K, EPT,
                                       VEC, UNIT_K, DT)
    ptr = part2_ptr + (row * P + pid) * S2
    tl.store(ptr, A1)
    tl.store(ptr + 1, EA)
    tl.store(ptr + 2, B1)
    tl.store(ptr + 3, EB)
    tl.store(ptr + 4, BC)


@triton.jit
def split_finish_kernel(z_ptr, t_ptr, w_ptr, h_ptr, den_ptr, zy_ptr, part1_ptr, part2_ptr,
                        loss_ptr, g_ptr, lse_ptr, K, D, s_n, s_k, s_d, g_n, g_k, g_d,
                        ignore_index, CHUNK, NPART1, NPART2, ACTIVE: tl.constexpr,
                        PASSIVE: tl.constexpr, EXACT: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                        MEAN: tl.constexpr, SHARDED: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
                        NEEDS2: tl.constexpr, SOFTCAP: tl.constexpr, STORE_LSE: tl.constexpr,
                        Z_LOSS: tl.constexpr, BLOCK_K: tl.constexpr, P_BLOCK: tl.constexpr, VEC: tl.constexpr,
                        EPT: tl.constexpr, UNIT_K: tl.constexpr, UNIT_GK: tl.constexpr,
                        DT: tl.constexpr):
    """Loss (chunk 0 of each row) and the gradient of this program's chunk, from the
    row's NPART1 stats1 and NPART2 stats2 partials."""
    row = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    K = _aligned(K, VEC)
    h = load_hyper(h_ptr)
    base, y, valid = _row_start(t_ptr, row, D, s_n, s_d, ignore_index, VEC)
    zy, wy, scale = _row_label(w_ptr, den_ptr, z_ptr, zy_ptr, h, row, base, y, valid, s_k, K,
                               HAS_WEIGHT, MEAN, SHARDED, SOFTCAP, DT)
    m, s, d, c = _load_stats1_partials(part1_ptr, row, NPART1, P_BLOCK)
    A1 = tl.zeros((), DT)
    EA = tl.zeros((), DT)
    B1 = tl.zeros((), DT)
    EB = tl.zeros((), DT)
    BC = tl.zeros((), DT)
    if NEEDS2:
        i = tl.arange(0, P_BLOCK)
        ptr = part2_ptr + (row * NPART2 + i) * S2
        A1 = tl.sum(tl.load(ptr, mask=i < NPART2, other=0.0), 0)
        EA = tl.sum(tl.load(ptr + 1, mask=i < NPART2, other=0.0), 0)
        B1 = tl.sum(tl.load(ptr + 2, mask=i < NPART2, other=0.0), 0)
        EB = tl.sum(tl.load(ptr + 3, mask=i < NPART2, other=0.0), 0)
        BC = tl.sum(tl.load(ptr + 4, mask=i < NPART2, other=0.0), 0)
    L, c1, c2a, c2b, c3a, c3b, log_s = epilogue(m, s, d, c, A1, EA, B1, EB, BC, zy, h,
                                        ACTIVE, PASSIVE, EXACT, Z_LOSS)
    if pid == 0:
        _store_row(loss_ptr, lse_ptr, row, L, wy, m, log_s, valid, STORE_LSE)
    if COMPUTE_GRAD:
        gbase = _row_base(row, D, g_n, g_d, VEC)
        lo = pid * CHUNK
        _chunk_grad(z_ptr, g_ptr, base, gbase, s_k, g_k, lo, tl.minimum(lo + CHUNK, K), y, zy, m,
                    log_s, valid,
                    scale, c1, c2a, c2b, c3a, c3b, h, ACTIVE, PASSIVE, EXACT, SOFTCAP, BLOCK_K,
                    EPT, VEC, UNIT_K, UNIT_GK, DT)
