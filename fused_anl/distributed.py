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

from . import _backend
from ._checks import compute_dtype
from .kernels import _codes as C
from .kernels._codes import STATS1

# Shard-local label of ignored rows: no class offset can produce it.
_IGNORED = -(2**62)


def shard_offset(group, k_local: int, class_start) -> int:
    if class_start is not None:
        return int(class_start)
    return dist.get_rank(group) * k_local  # equal shards, in rank order


def sharded_row_loss(z3, target, weight, hyper, den, *, active, passive, exact, ignore_index,
                     compute_grad, backend, group, class_start, return_lse=False):
    """Per-row loss of the full rows and the gradient of this rank's (N, K_local, D) shard
    (and, with ``return_lse``, each row's lse over all the classes, 0 on ignored rows)."""
    n, k, d = z3.shape
    rows = n * d
    cdt = compute_dtype(z3.dtype)
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

    backend = _backend.get(backend)
    # 1. stats1 of the shard + label logit -> one all_gather -> full-row stats1
    parts = backend.shard_stats1(z3)[:, 0, :]
    pack = torch.cat([parts, zy_local[:, None]], 1).contiguous()
    chunks = [torch.empty_like(pack) for _ in range(world)]
    dist.all_gather(chunks, pack, group=group)  # supported by every backend and version
    gathered = torch.stack(chunks)  # (world, rows, STATS1 + 1)
    zy = gathered[..., STATS1].amax(0)
    parts1 = gathered[..., :STATS1].permute(1, 0, 2).contiguous()  # (rows, world, STATS1)

    # 2. lse-dependent sums of the shard -> one all_reduce (only for terms that need them)
    needs2 = C.needs_stats2(active, passive)
    if needs2:
        part2 = backend.shard_stats2(z3, y_local, hyper, parts1, active=active, passive=passive,
                                     exact=exact)
        dist.all_reduce(part2, op=dist.ReduceOp.SUM, group=group)
    else:
        part2 = torch.zeros((rows, 1, C.STATS2), dtype=cdt, device=z3.device)

    # 3. loss rows and this shard's gradient
    loss, grad = backend.shard_finish(z3, y_local, wy, zy, hyper, den, parts1, part2,
                                      active=active, passive=passive, exact=exact,
                                      ignore_index=_IGNORED, compute_grad=compute_grad)
    if not return_lse:
        return loss, grad
    from ._torch_backend import merge_stats1
    ms, s, _, _ = merge_stats1(parts1)
    return loss, grad, torch.where(valid, ms + torch.log(s), 0.0)


# ------------------------------------------------------------- logits given as a DTensor


def is_dtensor(x) -> bool:
    """Whether ``x`` is a ``torch.distributed.tensor.DTensor`` (checked without importing
    the distributed package where it is absent)."""
    cls = type(x)
    return cls.__name__ == "DTensor" and cls.__module__.startswith("torch.distributed")


def from_dtensor(name, logits, target, weight):
    """The class-parallel form of a loss call on DTensor logits sharded on the class dim.

    ``logits`` must be a DTensor whose placements shard dimension 1 (the class
    dimension) on exactly one mesh dimension and replicate it on every other one (the
    layout of TorchTitan's loss parallel: a column-parallel output projection with
    ``use_local_output=False``). Its local tensor is this rank's slice of classes, laid
    out as ``torch.chunk`` lays it out (``Shard``'s rule): rank ``r`` of the mesh
    dimension holds classes ``[r * ceil(K / world), ...)``.

    Returns ``(local_logits, local_target, local_weight, group, class_start, wrap)``:
    the arguments of the ``process_group=`` form, and ``wrap``, which turns its result
    (identical on every rank) into a DTensor replicated over the mesh, as
    ``torch.distributed.tensor.parallel.loss_parallel`` returns it. Gradients flow to the
    DTensor logits through ``to_local``.
    """
    from torch.distributed.tensor import DTensor, Replicate

    mesh, placements = logits.device_mesh, tuple(logits.placements)
    nd = logits.dim()
    if nd < 2:
        raise ValueError(f"{name}: DTensor logits must have shape (N, K, ...), got {tuple(logits.shape)}")
    class_dims = [i for i, p in enumerate(placements) if p.is_shard() and p.dim % nd == 1]
    others = [p for i, p in enumerate(placements) if i not in class_dims]
    if len(class_dims) != 1 or not all(p.is_replicate() for p in others):
        raise ValueError(
            f"{name}: DTensor logits must be sharded on the class dimension (dim 1) over one "
            f"mesh dimension and replicated over the others; got placements {placements}. "
            "Other layouts (batch-sharded, partial) are not supported: redistribute first.")
    mesh_dim = class_dims[0]
    world, rank = mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
    k = logits.shape[1]
    chunk = -(-k // world)
    class_start = min(k, chunk * rank)
    local = logits.to_local()
    if local.shape[1] != min(k, class_start + chunk) - class_start:
        raise ValueError(f"{name}: the local shard has {local.shape[1]} classes where the "
                         f"torch.chunk layout of {k} classes over {world} ranks gives rank "
                         f"{rank} {min(k, class_start + chunk) - class_start}")
    if local.shape[1] == 0:
        raise ValueError(f"{name}: rank {rank} holds no class ({k} classes over {world} ranks); "
                         "use fewer ranks than classes")

    def plain(x, what):
        if not is_dtensor(x):
            return x
        if not all(p.is_replicate() for p in x.placements):
            raise ValueError(f"{name}: a DTensor {what} must be replicated, got placements "
                             f"{tuple(x.placements)}")
        return x.to_local()

    def wrap(out):
        return DTensor.from_local(out, mesh, [Replicate()] * mesh.ndim, run_check=False)

    return (local, plain(target, "target"), plain(weight, "weight"), mesh.get_group(mesh_dim),
            class_start, wrap)
