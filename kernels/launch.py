"""Launch helpers: pick the path and block sizes, allocate outputs, launch. No autograd."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ._codes import needs_stats2
from .row_loss import (
    row_loss_kernel,
    split_finish_kernel,
    split_stats1_kernel,
    split_stats2_kernel,
)


@dataclass(frozen=True)
class LaunchConfig:
    """Block-size policy. Tests shrink these so every path runs on small inputs."""

    max_single_k: int = 8192  # rows up to this many classes are read once, into registers
    block_k: int = 4096  # block of the streaming and split paths
    split_chunk: int = 32768  # columns per program in the split-row path
    split_max_rows: int = 256  # split rows only when there are at most this many rows
    max_chunks: int = 1024  # cap on chunks per row (the combine step loads them all)


_config = LaunchConfig()


def get_config() -> LaunchConfig:
    return _config


@contextlib.contextmanager
def config(**overrides):
    """Temporarily override the launch policy, e.g. ``config(max_single_k=16, block_k=8)``."""
    global _config
    old = _config
    _config = replace(old, **overrides)
    try:
        yield _config
    finally:
        _config = old


def _warps(block: int) -> int:
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


def choose_path(rows: int, k: int, cfg: LaunchConfig | None = None) -> str:
    cfg = cfg or _config
    if k <= cfg.max_single_k:
        return "single"
    if rows <= cfg.split_max_rows and k > cfg.split_chunk:
        return "split"
    return "stream"


def row_loss(z3, target, weight, hyper, den, *, active, passive, exact, ignore_index,
             compute_grad, grad_dtype=None, out=None):
    """Per-row loss (compute dtype, weighted, 0 on ignored rows) and, if asked, the gradient.

    z3: (N, K, D) view of the logits (any strides); target: (N*D,) int32/int64;
    weight: (K,) or None; hyper: compute-dtype vector (fused_anl/_hyper.py);
    den: 1-element tensor to divide the gradient by ('mean'), or None.
    The gradient, (N, K, D) contiguous in ``grad_dtype``, is that of
    ``sum(loss) / den`` (or ``sum(loss)`` when den is None). ``out``, an (N, K, D)
    tensor of any strides, receives it instead; it may be ``z3`` itself (the gradient
    overwrites the logits: every program reads its row, or block, before writing it,
    and the split-row path, whose programs read each other's columns, is not used).
    """
    n, k, d = z3.shape
    rows = n * d
    dt = tl.float64 if z3.dtype == torch.float64 else tl.float32
    cdtype = torch.float64 if z3.dtype == torch.float64 else torch.float32
    loss = torch.empty(rows, dtype=cdtype, device=z3.device)
    grad = None
    if compute_grad:
        grad = out if out is not None else torch.empty((n, k, d), dtype=grad_dtype or z3.dtype,
                                                       device=z3.device)
    if rows == 0:
        return loss, grad
    g_arg = grad if grad is not None else loss  # never written when compute_grad is False
    g_strides = grad.stride() if grad is not None else (0, 0, 0)
    w_arg = weight if weight is not None else hyper
    den_arg = den if den is not None else hyper
    s_n, s_k, s_d = z3.stride()
    common = dict(ACTIVE=active, PASSIVE=passive, EXACT=exact, DT=dt)
    cfg = _config
    path = choose_path(rows, k, cfg)
    if path == "split" and out is not None and out.data_ptr() == z3.data_ptr():
        path = "stream"
    if path in ("single", "stream"):
        single = path == "single"
        block = triton.next_power_of_2(k) if single else cfg.block_k
        row_loss_kernel[(rows,)](
            z3, target, w_arg, hyper, den_arg, loss, g_arg,
            k, d, s_n, s_k, s_d, *g_strides, ignore_index,
            HAS_WEIGHT=weight is not None, MEAN=den is not None, COMPUTE_GRAD=compute_grad,
            SINGLE=single, NEEDS2=needs_stats2(active, passive), BLOCK_K=block,
            num_warps=_warps(block), **common,
        )
        return loss, grad
    chunk = max(cfg.split_chunk, triton.cdiv(k, cfg.max_chunks))
    chunk = triton.cdiv(chunk, cfg.block_k) * cfg.block_k
    p = triton.cdiv(k, chunk)
    p_block = triton.next_power_of_2(p)
    part1 = torch.empty((rows, p, 4), dtype=cdtype, device=z3.device)
    warps = _warps(cfg.block_k)
    split_stats1_kernel[(rows, p)](
        z3, part1, k, d, s_n, s_k, s_d, chunk, BLOCK_K=cfg.block_k, DT=dt, num_warps=warps)
    part2 = part1
    if needs_stats2(active, passive):
        part2 = torch.empty((rows, p, 5), dtype=cdtype, device=z3.device)
        split_stats2_kernel[(rows, p)](
            z3, target, hyper, part1, part2, k, d, s_n, s_k, s_d, chunk, p,
            BLOCK_K=cfg.block_k, P_BLOCK=p_block, num_warps=warps, **common)
    split_finish_kernel[(rows, p if compute_grad else 1)](
        z3, target, w_arg, hyper, den_arg, hyper, part1, part2, loss, g_arg,
        k, d, s_n, s_k, s_d, *g_strides, ignore_index, chunk, p, p,
        HAS_WEIGHT=weight is not None, MEAN=den is not None, SHARDED=False,
        COMPUTE_GRAD=compute_grad, NEEDS2=needs_stats2(active, passive), BLOCK_K=cfg.block_k,
        P_BLOCK=p_block, num_warps=warps,
        **common,
    )
    return loss, grad


# ------------------------------------------------ class-parallel shards (no communication here)
# fused_anl/distributed.py runs: shard_stats1 -> all_gather -> shard_stats2 -> all_reduce
# -> shard_finish. Each step reads this rank's (N, K_local, D) shard once.


def shard_stats1(z3):
    """(rows, 1, 4) float stats1 (max, sum exp, sum (z - max), #present) of the local shard."""
    n, k, d = z3.shape
    cdtype = torch.float64 if z3.dtype == torch.float64 else torch.float32
    part = torch.empty((n * d, 1, 4), dtype=cdtype, device=z3.device)
    if n * d:
        block = min(_config.block_k, triton.next_power_of_2(k))
        split_stats1_kernel[(n * d, 1)](z3, part, k, d, *z3.stride(), k, BLOCK_K=block,
                                        DT=_dt(z3), num_warps=_warps(block))
    return part


def shard_stats2(z3, y_local, hyper, parts1, *, active, passive, exact):
    """(rows, 1, 5) stats2 sums of the local shard, given all ranks' stats1 (rows, W, 4)."""
    n, k, d = z3.shape
    part2 = torch.empty((n * d, 1, 5), dtype=parts1.dtype, device=z3.device)
    if n * d:
        block = min(_config.block_k, triton.next_power_of_2(k))
        split_stats2_kernel[(n * d, 1)](
            z3, y_local, hyper, parts1, part2, k, d, *z3.stride(), k, parts1.shape[1],
            ACTIVE=active, PASSIVE=passive, EXACT=exact, BLOCK_K=block,
            P_BLOCK=triton.next_power_of_2(parts1.shape[1]), DT=_dt(z3), num_warps=_warps(block))
    return part2


def shard_finish(z3, y_local, row_weight, zy, hyper, den, parts1, parts2, *, active, passive,
                 exact, ignore_index, compute_grad):
    """Per-row loss and this shard's gradient columns from the combined statistics."""
    n, k, d = z3.shape
    loss = torch.empty(n * d, dtype=parts1.dtype, device=z3.device)
    grad = torch.empty((n, k, d), dtype=z3.dtype, device=z3.device) if compute_grad else None
    if n * d:
        block = min(_config.block_k, triton.next_power_of_2(k))
        g_arg = grad if grad is not None else loss
        split_finish_kernel[(n * d, 1)](
            z3, y_local, row_weight, hyper, den if den is not None else hyper, zy, parts1, parts2,
            loss, g_arg, k, d, *z3.stride(), *(grad.stride() if grad is not None else (0, 0, 0)),
            ignore_index, k, parts1.shape[1], parts2.shape[1], ACTIVE=active, PASSIVE=passive,
            EXACT=exact, HAS_WEIGHT=True, MEAN=den is not None, SHARDED=True,
            COMPUTE_GRAD=compute_grad, NEEDS2=needs_stats2(active, passive), BLOCK_K=block,
            P_BLOCK=triton.next_power_of_2(max(parts1.shape[1], parts2.shape[1])), DT=_dt(z3),
            num_warps=_warps(block))
    return loss, grad


def _dt(z):
    return tl.float64 if z.dtype == torch.float64 else tl.float32
