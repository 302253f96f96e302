"""The batch entropy term of ANL-CE-ER, exact and chunked: ``batch_entropy``.

ANL-CE-ER (the published code's ``ANL_CE_ER``) is ``alpha*NCE + beta*NNCE' + lamb*E``
(+ ``delta*L1``). ``E`` is one number per batch:

    P_nk = clamp(softmax(z_n)_k, p_min, 1 - p_min)       for every non-ignored row n
    C_k  = sum_n P_nk,   T = sum_k C_k,   u_k = C_k / T,   q_k = clamp(u_k, p_min, 1 - p_min)
    E    = log K + sum_k q_k log q_k

This module computes ``E`` and its gradient without an autograd graph over ``N x K``;
the row part (NCE + NNCE') is a row loss of the registry, and the two are added.

Design note
-----------
*Why the gradient needs a second pass over the rows.* ``E`` couples the rows through
the column sums ``C``: the gradient of row ``n`` depends on ``G = dE/dC`` (below), a
function of *every* row's column sums, so it is known only once the last row has been
summed. The row losses of this package compute their gradient in the same pass as their
loss; this term cannot, and needs a second pass that re-reads the logits (or the row's
probabilities) after a K-sized step. (Saving ``P`` from the first pass would trade that
read for an ``N x K`` buffer written and read, which is worse.)

*Cost of this implementation* (torch ops on chunks of at most ``CHUNK_ELEMENTS`` elements,
so the temporaries are a few chunk-sized buffers; "a pass" reads every logit once from
memory, the ops on one cache-resident chunk counting as one pass):

- forward: one pass (per chunk: the row max and sum of exp, the probabilities, their
  clamp and the column sums), then one K-sized step (``T``, ``q``, ``E`` and ``G``);
- backward: one pass reading the logits and writing the gradient (per chunk: the
  probabilities again from the saved row max and sum, ``R_n`` on the chunk, then the
  gradient rows); ``grad_output`` is folded into ``G`` (K-sized), at no extra pass;
- class-parallel (``process_group``): forward is two passes over the local shard (the
  shard's row statistics, then its column sums with the global lse; one pass when
  ``lse`` is given) with one ``all_gather`` of ``world x rows x 4`` floats and two
  ``all_reduce`` of 2 floats each; backward is two passes (the shard's partial ``R_n``,
  then its gradient columns) with one ``all_reduce`` of ``rows`` floats.

Added to a fused row loss, ANL-CE-ER therefore costs, over plain ANL-CE, one more read
of the logits in forward and one read plus one write in backward (plus autograd's sum
of the two gradients, unless the composition folds this gradient into the row loss's).

*A fused Triton version.* (1) The row-statistics pass of the row kernel, where a program
holds a row (or a block of rows) with its lse, also forms ``P = clamp(p)`` and adds it,
masked by the row's validity, into column sums: each program accumulates a
``BLOCK_K``-tile over the rows it walks (a persistent grid) in registers and adds it to a
``(programs, K)`` partial buffer, or with one ``atomic_add`` per tile into ``C``
(non-deterministic summation order; the partial buffer plus a fixed-order reduction is
reproducible). On the streaming path (rows longer than a block) ``p`` needs the row's
final lse, so the column sums go in the sweep that already re-reads the row for the
lse-dependent sums. (2) A K-sized step (one small kernel or a few torch ops): ``T``,
``u``, ``q``, ``E``, ``g`` and ``G``. (3) The gradient pass: each program reloads its row,
recomputes ``p`` from the saved lse, reduces ``R_n = sum_j G_j m_nj p_nj`` (``G`` is K
floats, L2-resident) and writes ``c1 [j == y] + c2 p_j + c3 e_j + G_j m_j p_j - p_j R_n``,
the row loss's gradient and this term's in one write. The row loss's gradient then
moves out of the forward pass into this one, so ANL-CE-ER would cost two reads and one
write of ``N x K`` (plain ANL-CE: one read, one write), plus ``programs x K`` partial
sums; on an H200 (about 4.8 TB/s) the extra read of bf16 logits at ``N = 8192``,
``K = 131072`` (2 GiB) is about 0.45 ms.

Gradient (the derivation, once)
-------------------------------
torch's ``clamp`` passes the gradient where ``lo <= x <= hi`` (bounds included) and
gives 0 elsewhere (and at NaN); the masks below follow it, so that this gradient is
autograd's gradient of the published formula everywhere, at the bounds too::

    m_nk = [p_min <= p_nk <= 1 - p_min]       (dP_nk / dp_nk)
    a_k  = [p_min <= u_k  <= 1 - p_min]       (dq_k / du_k)
    dE/dq_k  = log q_k + 1,  so  dE/du_k = g_k := (log q_k + 1) a_k
    du_k/dC_j = ([k == j] - u_k) / T          (u = C / T, T = sum C)
    G_j := dE/dC_j = (g_j - sum_k u_k g_k) / T
    dE/dp_ni = G_i m_ni                        (C_i = sum_n P_ni)
    dp_ni/dz_nl = p_ni ([i == l] - p_nl)
    dE/dz_nl = sum_i G_i m_ni p_ni ([i == l] - p_nl) = G_l m_nl p_nl - p_nl R_n,
               R_n := sum_i G_i m_ni p_ni

and 0 for an ignored row. It is evaluated as autograd evaluates the published formula:
``W_nl = where(m_nl, G_l, 0)`` (dE/dp: exactly 0 where clamped, even when ``G`` is NaN),
``R_n = sum_l W_nl p_nl``, gradient ``p_nl (W_nl - R_n)`` (softmax's backward).
Class-parallel: ``G_j`` needs only ``T`` and ``sum_k u_k g_k`` (global scalars), ``W_nl p_nl``
is local, and ``R_n`` is the sum over the shards of their partial sums.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _torch_backend as _T
from ._checks import check_inputs, compute_dtype

# Elements (rows x K) per chunk, as fused_anl._torch_backend.CHUNK_ELEMENTS (read at each
# call, so a test may lower it to exercise many chunks).
CHUNK_ELEMENTS = _T.CHUNK_ELEMENTS

_NAME = "batch_entropy"
_NO_SECOND_HINT = ("For a second derivative, differentiate the published formula "
                   "(softmax, clamp, column sums) with autograd instead.")


def _step_rows(row_elements: int) -> int:
    return max(2, CHUNK_ELEMENTS // max(1, row_elements))


def _probs(z, ms, s):
    """Softmax rows ``exp(z - ms) / s`` of a chunk (a new tensor), from per-row statistics:
    the row max and sum of ``exp(z - max)``, or ``(lse, 1)``. Forward and backward form
    ``p`` with these same ops, so the clamp masks agree bit for bit."""
    return torch.sub(z, ms[:, None]).exp_().div_(s[:, None])


def _chunk_stats(z):
    """Row max and sum of ``exp(z - max)`` of a chunk (max of an all ``-inf`` row: -inf,
    so its probabilities are NaN, as ``softmax`` gives)."""
    ms = z.amax(1)
    return ms, torch.sub(z, ms[:, None]).exp_().sum(1)


def _shares(C, T, p_min):
    """The shard-local part of the K-sized step: ``u``, ``g``, ``sum q log q``, ``sum u g``."""
    hi = 1.0 - p_min
    u = C / T
    q = u.clamp(p_min, hi)
    log_q = torch.log(q)
    g = torch.where((u >= p_min) & (u <= hi), log_q + 1.0, 0.0)
    return u, g, (q * log_q).sum(), (u * g).sum()


def _class_step(C, T, qlogq, ug, g, log_k):
    """``E`` and ``G = dE/dC`` from the (global) sums and ``log K`` (a float, or a tensor:
    no device sync); an empty batch (``T == 0``: every row ignored) gives ``E = 0`` and
    ``G = 0``. A NaN ``T`` (a NaN row) keeps ``E`` NaN."""
    empty = T == 0
    E = torch.where(empty, 0.0, qlogq + log_k)
    G = torch.where(empty, 0.0, (g - ug) / T)
    return E, G


def _column_sums(z3, valid, ms, s, p_min, cdt, step):
    """``(C, ms, s)``: column sums ``C`` of the clamped probabilities of the valid rows, in
    one pass; ``ms``, ``s``: the rows' max and sum of exp (or lse and 1), or None to compute
    them chunk by chunk in the same pass."""
    n, k, d = z3.shape
    C = torch.zeros(k, dtype=cdt, device=z3.device)
    have_stats = ms is not None
    if not have_stats:
        ms = torch.empty(n * d, dtype=cdt, device=z3.device)
        s = torch.empty(n * d, dtype=cdt, device=z3.device)
    for n0, n1, z in _T._row_chunks(z3, step):
        r = slice(n0 * d, n1 * d)
        if not have_stats:
            ms[r], s[r] = _chunk_stats(z)
        C += _chunk_column_sums(z, ms[r], s[r], valid[r], p_min)
    return C, ms, s


def _chunk_column_sums(z, ms, s, valid, p_min):
    """One chunk's column sums of the clamped probabilities of its valid rows."""
    P = _probs(z, ms, s).clamp_(p_min, 1.0 - p_min)
    return P.masked_fill_(valid.logical_not()[:, None], 0.0).sum(0)


def _gradient_rows(z, ms, s, valid, G, p_min):
    """Per chunk: ``W = dE/dp = where(m, G, 0)``, ``p`` and ``R_n = sum_j W_nj p_nj``
    (partial on a shard). ``where``, not ``m * G``: a clamped entry has exactly 0, even
    where ``G`` is NaN, as torch.clamp's backward gives it."""
    p = _probs(z, ms, s)
    keep = (p >= p_min) & (p <= 1.0 - p_min)
    W = torch.where(keep, G, 0.0)
    return W, p, (W * p).sum(1)


def _logit_grad(W, p, R, valid):
    """``p (W - R)`` (softmax's backward) of a chunk, in place of W; ignored rows exactly 0."""
    g = W.sub_(R[:, None]).mul_(p)
    return g.masked_fill_(valid.logical_not()[:, None], 0.0)  # exactly 0, even if NaN


def _write_grad(grad, n0, n1, d, k, W, p, R, valid):
    """:func:`_logit_grad` into the rows ``n0:n1`` of ``grad``."""
    grad[n0:n1] = _logit_grad(W, p, R, valid).reshape(n1 - n0, d, k).permute(0, 2, 1)


class _BatchEntropy(torch.autograd.Function):
    """Outputs ``(E, ms, s, G)``; only ``E`` is differentiable, the rest is saved state."""

    @staticmethod
    def forward(logits, valid, p_min, lse, dims, group):
        n, k, d = dims
        z3 = logits.reshape(n, k, d)
        cdt = compute_dtype(logits.dtype)
        step = _step_rows(k * d)
        ms = s = None
        if lse is not None:
            ms = lse.reshape(-1).to(cdt)
            s = torch.ones_like(ms)
        if group is None:
            C, ms, s = _column_sums(z3, valid, ms, s, p_min, cdt, step)
            T = C.sum()
            u, g, qlogq, ug = _shares(C, T, p_min)
            E, G = _class_step(C, T, qlogq, ug, g, math.log(k))
            return E, ms, s, G
        import torch.distributed as dist
        if ms is None:  # the full rows' (max, sum exp): the shards' stats1, all_gathered
            parts = _T.shard_stats1(z3)[:, 0, :].contiguous()
            world = dist.get_world_size(group)
            chunks = [torch.empty_like(parts) for _ in range(world)]
            dist.all_gather(chunks, parts, group=group)
            ms, s, _, _ = _T.merge_stats1(torch.stack(chunks, 1))
        C, ms, s = _column_sums(z3, valid, ms, s, p_min, cdt, step)
        tk = torch.stack([C.sum(), torch.tensor(float(k), dtype=cdt, device=C.device)])
        dist.all_reduce(tk, group=group)  # T and the global K
        T = tk[0]
        u, g, qlogq, ug = _shares(C, T, p_min)
        sums = torch.stack([qlogq, ug])
        dist.all_reduce(sums, group=group)
        E, G = _class_step(C, T, sums[0], sums[1], g, torch.log(tk[1]))
        return E, ms, s, G

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, valid, p_min, lse, dims, group = inputs
        _, ms, s, G = output
        ctx.mark_non_differentiable(ms, s, G)
        ctx.p_min, ctx.dims, ctx.group, ctx.shape = p_min, dims, group, logits.shape
        ctx.save_for_backward(logits, valid, ms, s, G)

    @staticmethod
    def backward(ctx, grad_e, *_):
        logits, valid, ms, s, G = ctx.saved_tensors
        n, k, d = ctx.dims
        z3 = logits.reshape(n, k, d)
        Gs = G * grad_e.to(G.dtype)  # grad_output folded into G: no extra pass
        step = _step_rows(k * d)
        grad = torch.empty((n, k, d), dtype=logits.dtype, device=logits.device)
        p_min, group = ctx.p_min, ctx.group
        if group is None:  # one pass: R_n on the chunk it was computed from
            for n0, n1, z in _T._row_chunks(z3, step):
                r = slice(n0 * d, n1 * d)
                W, p, R = _gradient_rows(z, ms[r], s[r], valid[r], Gs, p_min)
                _write_grad(grad, n0, n1, d, k, W, p, R, valid[r])
        else:  # the shards' partial R_n, one all_reduce, then the gradient columns
            import torch.distributed as dist
            R = torch.empty(n * d, dtype=G.dtype, device=G.device)
            for n0, n1, z in _T._row_chunks(z3, step):
                r = slice(n0 * d, n1 * d)
                R[r] = _gradient_rows(z, ms[r], s[r], valid[r], Gs, p_min)[2]
            dist.all_reduce(R, group=group)
            for n0, n1, z in _T._row_chunks(z3, step):
                r = slice(n0 * d, n1 * d)
                W, p, _ = _gradient_rows(z, ms[r], s[r], valid[r], Gs, p_min)
                _write_grad(grad, n0, n1, d, k, W, p, R[r], valid[r])
        grad = grad.reshape(ctx.shape)
        if torch.is_grad_enabled():  # create_graph=True: differentiating this gradient raises
            from .functional import _no_second_derivative
            grad = _no_second_derivative(grad, _NAME, hint=_NO_SECOND_HINT)
        return grad, None, None, None, None, None


def batch_entropy(logits: torch.Tensor, target: torch.Tensor, *, p_min: float = 1e-7,
                  ignore_index: int = -100, process_group=None,
                  class_start: Optional[int] = None,
                  lse: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""Batch entropy term ``E`` of ANL-CE-ER (the published ``ANL_CE_ER.entropy_reg``).

    .. math::
        P_{nk} = \mathrm{clamp}(\mathrm{softmax}(z_n)_k, p_{min}, 1 - p_{min}),\quad
        q_k = \mathrm{clamp}\Big(\frac{\sum_n P_{nk}}{\sum_{n,j} P_{nj}}, p_{min},
        1 - p_{min}\Big),\quad E = \log K + \sum_k q_k \log q_k

    over the non-ignored rows ``n``; ``E`` is 0 for a batch whose class shares are
    uniform and grows to about ``log K`` as the batch collapses onto one class. It is one
    number per batch (no reduction), added once to the batch-mean row loss:
    ``alpha * NCE + beta * NNCE' + lamb * batch_entropy(...)``.

    The gradient is exact (autograd's gradient of the published formula, the clamps'
    bounds included; the derivation is in this module's docstring) and is computed
    without an autograd graph over ``N x K``: forward makes one pass over the logits and
    a K-sized step, backward one pass that writes the gradient (class-parallel: two
    passes each; see the module docstring for the collectives). The temporaries are a
    few chunks of ``fused_anl.batch_entropy.CHUNK_ELEMENTS`` elements.

    Args:
        logits (Tensor): unnormalized scores ``(N, K)`` or ``(N, K, d1, ...)`` (every
            position of the trailing dims is a row), float32, float16, bfloat16 or
            float64. A ``-inf`` (absent) class has ``p = 0``, which the clamp raises to
            ``p_min`` as in the published code: it adds ``p_min`` per row to its column
            sum and counts in ``K``, and its gradient is exactly 0. A NaN or ``+inf``
            logit in a non-ignored row makes ``E`` NaN (the term couples all rows) and
            the gradient NaN in every non-ignored row, except, as autograd of the
            published formula has it, in a row whose probabilities are all clamped
            (exactly 0 there: torch.clamp's backward drops the NaN). A DTensor sharded
            on the class dimension takes the class-parallel path (result: a replicated
            DTensor).
        target (Tensor): class indices ``(N,)`` or ``(N, d1, ...)``, int64 or int32; only
            used to find the ignored rows (and checked as by the row losses).
        p_min (float): the clamp bound of both clamps (the published ``min_prob``), in
            ``(0, 0.5)``. Default: 1e-7.
        ignore_index (int): rows with this label take no part in ``E``, and their
            gradient is exactly 0 whatever their logits. If every row is ignored (or
            there is no row), ``E = 0`` with a zero gradient. Default: -100.
        process_group (ProcessGroup, optional): class-parallel mode: ``logits`` is this
            rank's slice of the classes; every rank gets the full ``E`` and the gradient
            of its slice. Default: None.
        class_start (int, optional): first class of this rank's slice, for the label
            checks (the term itself needs no class offset). Default: rank x K_local.
        lse (Tensor, optional): the rows' log-sum-exp over *all* classes (``N`` or
            ``(N, d1, ...)`` values), when the caller has it already (e.g. the row loss
            of the same logits): saves the row-statistics reductions, and, class-parallel,
            a pass and the ``all_gather``. It is not differentiated through (the
            gradient w.r.t. ``logits`` already includes the dependence of ``p`` on the
            lse). Default: None.

    Returns:
        Tensor: ``E``, shape ``()``, float32 (float64 for float64 logits); arithmetic in
        that dtype. The gradient has the logits' dtype.

    Raises:
        ValueError: ``p_min`` outside ``(0, 0.5)``, or the input checks of the row losses
            (shapes, dtypes, labels out of range or on an absent class).

    Example::

        >>> logits = torch.randn(8, 10, requires_grad=True)
        >>> target = torch.randint(0, 10, (8,))
        >>> batch_entropy(logits, target, p_min=1e-7).backward()
    """
    from . import distributed
    if distributed.is_dtensor(logits):
        if process_group is not None or class_start is not None:
            raise ValueError(f"{_NAME}: DTensor logits carry their own process group and "
                             "class offset; do not pass process_group or class_start")
        local, target, _, group, start, wrap = distributed.from_dtensor(_NAME, logits, target,
                                                                       None)
        return wrap(batch_entropy(local, target, p_min=p_min, ignore_index=ignore_index,
                                  process_group=group, class_start=start, lse=lse))
    if isinstance(p_min, bool) or not isinstance(p_min, (int, float)) \
            or not 0.0 < float(p_min) < 0.5:
        raise ValueError(f"{_NAME}: p_min must be a number in (0, 0.5), got {p_min!r}")
    if process_group is not None:
        from .functional import _check_sharded
        dims = _check_sharded(_NAME, logits, target, None, "mean", ignore_index, process_group,
                              class_start)
    else:
        if class_start is not None:
            raise ValueError(f"{_NAME}: class_start is only meaningful with process_group")
        dims = check_inputs(_NAME, logits, target, None, "mean", ignore_index)
    n, _, d = dims
    if lse is not None:
        if not isinstance(lse, torch.Tensor) or lse.numel() != n * d \
                or lse.device != logits.device:
            raise ValueError(f"{_NAME}: lse must be a tensor of the {n * d} rows' log-sum-exp "
                             f"on {logits.device}")
        lse = lse.detach()
    valid = target.reshape(-1) != ignore_index
    out = _BatchEntropy.apply(logits, valid, float(p_min), lse, dims, process_group)
    return out[0]


def _linear_logits(hidden, weight, bias, a, b, cdt):
    """One chunk's logits ``hidden[a:b] @ weight.T + bias`` in the compute dtype."""
    h = hidden[a:b]
    z = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
    return z.to(cdt)


class _LinearBatchEntropy(torch.autograd.Function):
    """``E`` of the logits ``hidden @ weight.T + bias``, formed chunk by chunk and never
    held whole: forward forms each chunk once (its row statistics and clamped column
    sums), backward forms it again (the probabilities from the saved row statistics) and
    turns its logit gradient into its share of the gradients of ``hidden``, ``weight`` and
    ``bias`` (the latter two accumulated in float32), as the fused linear loss does."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, valid, p_min, chunk):
        n, k = hidden.shape[0], weight.shape[0]
        cdt = compute_dtype(hidden.dtype)
        C = torch.zeros(k, dtype=cdt, device=hidden.device)
        ms = torch.empty(n, dtype=cdt, device=hidden.device)
        s = torch.empty(n, dtype=cdt, device=hidden.device)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            z = _linear_logits(hidden, weight, bias, a, b, cdt)
            ms[a:b], s[a:b] = _chunk_stats(z)
            C += _chunk_column_sums(z, ms[a:b], s[a:b], valid[a:b], p_min)
        T = C.sum()
        u, g, qlogq, ug = _shares(C, T, p_min)
        E, G = _class_step(C, T, qlogq, ug, g, math.log(k))
        ctx.save_for_backward(hidden, weight, bias, valid, ms, s, G)
        ctx.p_min, ctx.chunk = p_min, chunk
        return E

    @staticmethod
    def backward(ctx, grad_e):
        hidden, weight, bias, valid, ms, s, G = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        cdt = ms.dtype
        acc = torch.float64 if cdt == torch.float64 else torch.float32
        Gs = G * grad_e.to(G.dtype)  # grad_output folded into G
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = (torch.zeros(weight.shape[0], dtype=acc, device=weight.device)
              if need_b and bias is not None else None)
        for a in range(0, n, ctx.chunk):
            b = min(n, a + ctx.chunk)
            z = _linear_logits(hidden, weight, bias, a, b, cdt)
            W, p, R = _gradient_rows(z, ms[a:b], s[a:b], valid[a:b], Gs, ctx.p_min)
            dz = _logit_grad(W, p, R, valid[a:b])
            if gh is not None:
                gh[a:b] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if gw is not None:
                gw.addmm_(dz.t().to(acc), hidden[a:b].to(acc))
            if gb is not None:
                gb += dz.sum(0).to(acc)
        gw = gw.to(weight.dtype) if gw is not None else None
        gb = gb.to(weight.dtype) if gb is not None else None
        if torch.is_grad_enabled():  # create_graph=True: differentiating this gradient raises
            from .functional import _no_second_derivative
            gh, gw, gb = (None if x is None else _no_second_derivative(x, _NAME, _NO_SECOND_HINT)
                          for x in (gh, gw, gb))
        return gh, gw, gb, None, None, None


def linear_batch_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor], target: torch.Tensor, *,
                         p_min: float = 1e-7, ignore_index: int = -100,
                         chunk_size: int) -> torch.Tensor:
    """``E`` (see :func:`batch_entropy`) of the logits ``hidden @ weight.T + bias`` without
    materializing them: ``chunk_size`` rows at a time, one extra logits product in forward
    and one in backward beside the two gradient products. Inputs are checked by the
    caller (``fused_anl.linear_loss``); not class-parallel."""
    valid = target.reshape(-1) != ignore_index
    return _LinearBatchEntropy.apply(hidden, weight, bias, valid, float(p_min), int(chunk_size))


__all__ = ["batch_entropy", "linear_batch_entropy"]
