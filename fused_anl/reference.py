"""Eager PyTorch implementations of every loss of docs/semantics.md: the oracle.

Written to follow docs/semantics.md to the letter and differentiated by autograd, with no
attempt at speed or memory economy. Arithmetic is float32 whatever the logits'
dtype (as in the published code), float64 for float64 logits. The signatures are
those of the fused functional API (``backend`` is accepted and ignored).

Absent classes (``-inf`` logits) take part in no sum (docs/semantics.md). Ignored samples
contribute a loss of 0 and a gradient of 0 whatever their logits (NaN included).
"""
from __future__ import annotations

import math

import torch

from . import _registry as R
from ._checks import check_inputs, compute_dtype  # noqa: F401 (compute_dtype: public here)


def _focal_weight(p, gamma, detach):
    w = (1.0 - p) ** gamma
    return w.detach() if detach else w


# --- the terms, one function each (the same ``(l, p, present, y_onehot, h, detach)`` ->
# per-row loss), dispatched through ACTIVE / PASSIVE below -----------------------------


def _ce(l, p, present, y_onehot, h, detach):
    return -l.where(y_onehot, 0).sum(1)


def _fl(l, p, present, y_onehot, h, detach):
    l_y = l.where(y_onehot, 0).sum(1)
    return -_focal_weight(l_y.exp(), h["gamma"], detach) * l_y


def _nce(l, p, present, y_onehot, h, detach):
    return l.where(y_onehot, 0).sum(1) / l.where(present, 0).sum(1)


def _nfl(l, p, present, y_onehot, h, detach):
    # mask l before the product: w * (-inf) at an absent class would give 0 * inf = NaN
    # in the exact (undetached) gradient
    wl = _focal_weight(p, h["gamma"], detach) * l.where(present, 0)
    return wl.where(y_onehot, 0).sum(1) / wl.sum(1)


def _nnce(l, p, present, y_onehot, h, detach):
    a = -math.log(h["p_min"])
    v = a + torch.log(torch.clamp(p, h["p_min"], 1.0))
    return 1.0 - v.where(y_onehot, 0).sum(1) / v.sum(1)


def _nnfl(l, p, present, y_onehot, h, detach):
    pm, g = h["p_min"], h["gamma"]
    lc = torch.clamp(l, min=math.log(pm))
    fl = -_focal_weight(lc.exp(), g, detach) * lc
    a = -((1.0 - pm) ** g) * math.log(pm)
    k = l.shape[1]
    return 1.0 - (a - fl.where(y_onehot, 0).sum(1)) / (k * a - fl.sum(1))


def _p_y(p, y_onehot):
    return p.where(y_onehot, 0).sum(1)


def _mae(l, p, present, y_onehot, h, detach):
    return 1.0 - _p_y(p, y_onehot)


def _rce(l, p, present, y_onehot, h, detach):
    others = present & ~y_onehot
    return R.RCE_A * torch.clamp(p, R.P_FLOOR, 1.0).where(others, 0).sum(1)


def _gce(l, p, present, y_onehot, h, detach):
    q = h["q"]
    return (1.0 - torch.clamp(_p_y(p, y_onehot), R.P_FLOOR, 1.0) ** q) / q


def _agce(l, p, present, y_onehot, h, detach):
    q, a = h["q"], h["a"]
    return ((a + 1.0) ** q - (a + _p_y(p, y_onehot)) ** q) / q


def _aul(l, p, present, y_onehot, h, detach):
    q, a = h["q"], h["a"]
    return ((a - _p_y(p, y_onehot)) ** q - (a - 1.0) ** q) / q


def _ael(l, p, present, y_onehot, h, detach):
    return torch.exp(-_p_y(p, y_onehot) / h["a"])


def _amse(l, p, present, y_onehot, h, detach):
    # the mean over the present classes of (p_k - a [k == y])^2
    sq = (p - h["a"] * y_onehot.to(p.dtype)) ** 2
    return sq.where(present, 0).sum(1) / present.sum(1).to(p.dtype)


def _nnce_er(l, p, present, y_onehot, h, detach):
    # ANL-CE-ER's NNCE as published (ANL_CE_ER.nnce clamps to [p_min, 1 - p_min]); the
    # fused path computes it as NNCE (fused_anl/_registry.py BATCH_LOSSES says why)
    a = -math.log(h["p_min"])
    v = a + torch.log(torch.clamp(p, h["p_min"], 1.0 - h["p_min"]))
    return 1.0 - v.where(y_onehot, 0).sum(1) / v.sum(1)


def _ls(l, p, present, y_onehot, h, detach, w=None):
    # F.cross_entropy's label smoothing: (1 - eps) w_y (-l_y) + (eps / K) sum_k w_k (-l_k),
    # over the K present classes (w: the class weights, or 1)
    eps = h["label_smoothing"]
    wk = torch.ones_like(l) if w is None else w.to(l.dtype).expand_as(l)
    wy = wk.where(y_onehot, 0).sum(1)
    smooth = -(wk * l).where(present, 0).sum(1) / present.sum(1).to(l.dtype)
    return (1.0 - eps) * wy * -l.where(y_onehot, 0).sum(1) + eps * smooth


ACTIVE = {R.A_CE: _ce, R.A_FL: _fl, R.A_NCE: _nce, R.A_NFL: _nfl}
PASSIVE = {R.P_NNCE: _nnce, R.P_NNFL: _nnfl, R.P_MAE: _mae, R.P_RCE: _rce, R.P_GCE: _gce,
           R.P_AGCE: _agce, R.P_AUL: _aul, R.P_AEL: _ael, R.P_AMSE: _amse, R.P_LS: _ls}


def reduce_rows(loss, t, weight, reduction, ignore_index, out_shape, weighted=False):
    """Apply class weights, ignore_index and the reduction to per-row losses
    (``weighted``: the rows carry their class weights already; the weights then only
    divide the mean)."""
    keep = t != ignore_index
    w = keep.to(loss.dtype)
    if weight is not None:
        w = w * weight.to(loss.dtype)[t.clamp(0, weight.shape[0] - 1)]
    loss = torch.where(keep, loss, torch.zeros_like(loss)) * (keep.to(loss.dtype) if weighted else w)
    if reduction == "none":
        return loss.reshape(out_shape)
    if reduction == "sum":
        return loss.sum()
    # as torch.nn.functional.cross_entropy: divided by the weight sum as it is (all
    # samples ignored: 0/0 = NaN; weights summing to 0: inf or NaN; negative: as is)
    return loss.sum() / w.sum()


def batch_entropy(logits, target, *, p_min=1e-7, ignore_index=-100):
    """ANL-CE-ER's batch term, from its definition (the published ``entropy_reg``): with
    ``P = clamp(softmax(z), p_min, 1 - p_min)`` over the non-ignored samples,
    ``q = clamp(sum_n P_n / sum_nk P_nk, p_min, 1 - p_min)`` and ``E = log K + sum_k q_k
    log q_k`` (0 when every sample is ignored)."""
    k = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, k).to(compute_dtype(logits.dtype))
    keep = target.reshape(-1) != ignore_index
    if not bool(keep.any()):
        return (z * 0).sum()
    prob = torch.softmax(z[keep], dim=1).clamp(p_min, 1.0 - p_min)
    q = (prob.sum(0) / prob.sum()).clamp(p_min, 1.0 - p_min)
    return math.log(k) + (q * q.log()).sum()


def softcap(z, cap):
    """``cap * tanh(z / cap)`` (Gemma 2's logit soft cap); ``-inf`` stays ``-inf`` (an absent
    class) and ``+inf`` becomes NaN (a non-finite logit poisons its row, as without a cap)."""
    capped = cap * torch.tanh(z / cap)
    capped = torch.where(z == float("inf"), float("nan"), capped)
    return torch.where(z == float("-inf"), z, capped)


def loss_by_name(name, logits, target, *, reduction="mean", ignore_index=-100, weight=None,
                 backend="torch", detach_focal_weight=True, z_loss=0.0, logit_softcap=None,
                 label_smoothing=0.0, return_lse=False, _passive=None, **hyper):
    """The reference of ``fused_anl.<name>`` with the same keywords; ``label_smoothing``
    (``ce`` only), ``z_loss``, ``logit_softcap`` and ``return_lse`` as documented there."""
    if label_smoothing:
        if name not in ("ce", "ce:ls"):
            raise TypeError(f"{name}: label_smoothing is an option of ce only")
        name, hyper = "ce:ls", dict(hyper, label_smoothing=label_smoothing)
    if name in R.BATCH_LOSSES:  # rows + lamb * E (fused_anl.functional._batch_loss)
        h = R.resolve_hyper(R.BATCH_LOSSES[name], hyper)
        rows = loss_by_name(f"{name}:rows", logits, target, reduction=reduction,
                            ignore_index=ignore_index, weight=weight,
                            _passive=_nnce_er,  # the published two-sided clamp
                            **{k: h[k] for k in R.ROW_PARTS[f"{name}:rows"].hyper})
        E = batch_entropy(logits, target, p_min=h["p_min"], ignore_index=ignore_index)
        if reduction == "none":
            counted = (target != ignore_index).to(rows.dtype)
            return rows + (h["lamb"] * E) * (counted / counted.sum().clamp_min(1.0))
        return rows + h["lamb"] * E
    spec = R.spec_of(name)
    h = R.resolve_hyper(spec, hyper)
    check_inputs(name, logits, target, weight, reduction, ignore_index)
    k = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, k).to(compute_dtype(logits.dtype))
    t = target.reshape(-1).long()
    keep = t != ignore_index
    # ignored rows take no part: their logits, NaN or not, get an exact zero gradient
    # (F.cross_entropy gives NaN there: log_softmax's backward computes 0 * exp(NaN))
    z = torch.where(keep[:, None], z, torch.zeros((), dtype=z.dtype, device=z.device))
    if logit_softcap:
        z = softcap(z, logit_softcap)
    # a comparison, not one_hot (which reads the labels' values: not vmappable)
    y_onehot = torch.arange(k, device=z.device) == torch.where(keep, t, 0).clamp(0, k - 1)[:, None]
    # absent: -inf only; a NaN class is present (it poisons its row's sums, as in the
    # kernels: a NaN or +inf logit makes the row NaN, docs/semantics.md)
    present = z != float("-inf")
    l = torch.log_softmax(z, dim=1)
    p = l.exp()
    loss = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    if spec.active != R.A_NONE:
        loss = loss + h["alpha"] * ACTIVE[spec.active](l, p, present, y_onehot, h,
                                                       detach_focal_weight)
    ls = spec.passive == R.P_LS
    if ls:  # the label's weight is inside the term (the smoothing part is not weighted by it)
        loss = loss + _ls(l, p, present, y_onehot, h, detach_focal_weight, weight)
    elif spec.passive != R.P_NONE:
        loss = loss + h["beta"] * (_passive or PASSIVE[spec.passive])(
            l, p, present, y_onehot, h, detach_focal_weight)
    lse = torch.logsumexp(z, dim=1)
    if z_loss:  # part of the sample's loss: weighted by its label's class weight
        zl = z_loss * lse * lse
        if ls and weight is not None:
            zl = zl * weight.to(z.dtype)[torch.where(keep, t, 0).clamp(0, k - 1)]
        loss = loss + zl
    out = reduce_rows(loss, t, weight, reduction, ignore_index, target.shape, weighted=ls)
    if return_lse:
        return out, torch.where(keep, lse, 0.0).detach().reshape(target.shape)
    return out


def _make(name):
    spec = R.spec_of(name)

    def fn(logits, target, **kwargs):
        return loss_by_name(name, logits, target, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Reference {name}: {spec.doc}. Keywords: {', '.join(spec.keywords) or 'none'}."
    return fn


for _name in R.public_names():
    globals()[_name] = _make(_name)

__all__ = R.public_names() + ["loss_by_name", "reduce_rows", "batch_entropy"]
