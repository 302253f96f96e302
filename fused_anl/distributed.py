"""Class-parallel losses: each rank holds the logits of a contiguous slice of classes.

Every loss of the family needs only per-row statistics of the whole row, so only
those cross ranks, never a K-sized tensor:

1. each rank computes its shard's stats1 ``(max, sum exp(z - max), sum (z - max),
   #present)`` and its label logit (``-inf`` where the label is on another shard),
   packs the five per-row floats, and one ``all_gather`` brings every rank's; each
   rank combines them (log-sum-exp merge, max for the label logit) into the full
   row's statistics;
2. only if a term needs lse-dependent sums (NFL, NNCE, NNFL, RCE): each rank sums
   its shard's five stats2 values with the global lse and one ``all_reduce(SUM)``
   completes them;
3. each rank computes the per-row loss (identical on every rank) and the gradient
   of its own columns. Backward needs no communication.

So a forward costs one collective (CE, FL, NCE, MAE, GCE, AGCE, AUL, AEL and their
combinations) or two (anything with NFL, NNCE, NNFL or RCE), each carrying
``world x N x 5`` (gather) or ``N x 5`` (reduce) floats.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import _hyper
from . import _torch_backend as TB
from .kernels import _codes as C

# Shard-local label of ignored rows: no class offset can produce it.
_IGNORED = -(2**62)


def shard_offset(group, k_local: int, class_start) -> int:
    if class_start is not None:
        return int(class_start)
    return dist.get_rank(group) * k_local  # equal shards, in rank order


def sharded_row_loss(z3, target, weight, hyper, den, *, active, passive, exact, ignore_index,
                     compute_grad, backend, group, class_start):
    """Per-row loss of the full rows and the gradient of this rank's (N, K_local, D) shard."""
    n, k, d = z3.shape
    rows = n * d
    cdt = torch.float64 if z3.dtype == torch.float64 else torch.float32
    world = dist.get_world_size(group)
    start = shard_offset(group, k, class_start)
    t = target.reshape(-1).long()
    valid = t != ignore_index
    y = t - start
    owned = valid & (y >= 0) & (y < k)
    idx = torch.arange(rows, device=z3.device)
    zy_local = z3[idx // d, y.clamp(0, k - 1), idx % d].to(cdt)
    zy_local = torch.where(owned, zy_local, torch.full_like(zy_local, float("-inf")))
    if weight is not None:
        wy = weight.to(cdt)[t.clamp(0, weight.shape[0] - 1)]
    else:
        wy = torch.ones(rows, dtype=cdt, device=z3.device)
    wy = torch.where(valid, wy, torch.zeros_like(wy))
    y_local = torch.where(valid, y, torch.full_like(y, _IGNORED))

    # 1. stats1 of the shard + label logit -> one all_gather -> full-row stats1
    if backend == "triton":
        from .kernels import launch
        parts = launch.shard_stats1(z3)[:, 0, :]
    else:
        parts = torch.cat([_torch_stats1(z) for _, _, z in TB._row_chunks(z3)]) if rows else \
            torch.empty((0, 4), dtype=cdt, device=z3.device)
    pack = torch.cat([parts, zy_local[:, None]], 1).contiguous()
    chunks = [torch.empty_like(pack) for _ in range(world)]
    dist.all_gather(chunks, pack, group=group)  # supported by every backend and version
    gathered = torch.stack(chunks)  # (world, rows, 5)
    zy = gathered[..., 4].amax(0)
    parts1 = gathered[..., :4].permute(1, 0, 2).contiguous()  # (rows, world, 4)

    # 2. lse-dependent sums of the shard -> one all_reduce
    needs2 = C.needs_stats2(active, passive)
    if backend == "triton":
        from .kernels import launch
        hv = _hyper.device_tensor(tuple(hyper), str(z3.device), cdt)
        part2 = (launch.shard_stats2(z3, y_local, hv, parts1, active=active, passive=passive,
                                     exact=exact) if needs2
                 else torch.zeros((rows, 1, 5), dtype=cdt, device=z3.device))
    else:
        hd = _hyper.by_name(hyper)
        ms, s, dsum, c = TB.merge_stats1(parts1)
        part2 = torch.zeros((rows, 1, 5), dtype=cdt, device=z3.device)
        if needs2:
            for n0, n1, z in TB._row_chunks(z3):
                r = slice(n0 * d, n1 * d)
                part2[r, 0] = TB.stats2_sums(z, y_local[r], (y_local[r] >= 0) & (y_local[r] < k),
                                             ms[r], torch.log(s[r]), hd, active, passive, exact)
    if needs2:
        dist.all_reduce(part2, op=dist.ReduceOp.SUM, group=group)

    # 3. loss rows and this shard's gradient
    if backend == "triton":
        return launch.shard_finish(z3, y_local, wy, zy, hv, den, parts1, part2, active=active,
                                   passive=passive, exact=exact, ignore_index=_IGNORED,
                                   compute_grad=compute_grad)
    loss = torch.empty(rows, dtype=cdt, device=z3.device)
    grad = torch.empty((n, k, d), dtype=z3.dtype, device=z3.device) if compute_grad else None
    scale = wy / den.to(cdt) if den is not None else wy
    for n0, n1, z in TB._row_chunks(z3):
        r = slice(n0 * d, n1 * d)
        yl = y_local[r]
        lr, g = TB._finish(z, yl, (yl >= 0) & (yl < k), valid[r], zy[r].where(zy[r] > float("-inf"),
                           torch.full_like(zy[r], float("nan"))), wy[r], scale[r], ms[r],
                           torch.log(s[r]), c[r], dsum[r], list(part2[r, 0].unbind(1)), hd,
                           active, passive, exact, compute_grad)
        loss[r] = lr
        if compute_grad:
            grad[n0:n1] = g.reshape(n1 - n0, d, k).permute(0, 2, 1)
    return loss, grad


def _torch_stats1(z):
    ms, s, dsum, c = TB._stats1(z)
    m = torch.where(c > 0, ms, torch.full_like(ms, float("-inf")))  # all-absent shard row
    return torch.stack([m, s, dsum, c], 1)
