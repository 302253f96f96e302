"""Launch helpers: pick the path and block sizes, allocate outputs, launch. No autograd."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import _codes as C
from ._codes import STATS1, STATS2, needs_stats2
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
    # Block elements per thread: num_warps = block / (32 * this). 0: the policy table
    # ELEMS_PER_THREAD (16 for most losses); a value here applies to every loss and path
    # (tests, benchmarks/tune.py).
    elems_per_thread: int = 0
    max_warps: int = 32  # num_warps is clamped to [4, max_warps] (32: 1024 threads)
    # Streaming rows on a persistent grid sized from the L2 (stream_grid): the rows in
    # flight take at most l2_fraction of the L2, with 1 to max_programs_per_sm programs
    # per SM. programs_per_sm > 0 fixes the programs per SM instead (benchmarks/tune.py).
    programs_per_sm: int = 0
    l2_fraction: float = 0.5
    max_programs_per_sm: int = 8
    sms: int = 0  # SMs to plan the persistent grid for (0: the device's; tests set 1)
    l2_bytes: int = 0  # L2 bytes to plan for (0: the device's; none off CUDA)
    scale_programs_per_sm: int = 8  # backward kernel's grid (scale_grid)


_config = LaunchConfig()

# Compiler options of every launch. FMA contraction on: the kernels' arithmetic is
# written for it (``c3 e + p k`` and the like are meant to be one FFMA), and it is
# Triton 3.9's default only until 3.10 turns it off.
COMPILE = dict(enable_fp_fusion=True)


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


# The launch policy's elements per thread (block elements per thread: num_warps = block /
# (32 x this)), by path ("single": a row in one block; "blocks": the streaming and split
# paths, whose loop bodies are the same) and loss ((active, passive) term codes), where
# the default is not the best. Static sm_90 figures (benchmarks/kernel_resources.py;
# tests/test_gpu_compile.py checks occupancy >= 0.25 and no spills for every loss):
# - 16 by default (16 warps at 8192): at 32 the heaviest losses sat at the 255-register
#   cap with 1 block of 8 warps per SM; at 16 none needs more than ~130 registers.
# - plain CE in one block: 32 (8 warps at 8192, 47 registers, occupancy 0.62): the row's
#   reductions and epilogue cost ~200 instructions per thread whatever it holds, 12.5
#   per element at 16 per thread, 6 at 32 (29.9 -> 23.4 instructions per element).
# - NFL + RCE streaming: 8; it keeps all five stats2 sums per thread and NFL's power:
#   144 registers at 16 per thread (one block of 8 warps per SM), 96 at 8 (0.25).
# - NFL + AMSE streaming: 8; at 16 per thread its float32 gradient loop spilled 4 bytes
#   once the other columns' coefficients carried the row's scale (80 registers).
# - ANL-CE on COMPACT rows (``compact_rows``: 2-byte logits, unit column stride, no soft
#   cap): 32 on every path. In one block (8 warps at 8192: 128 registers, the same
#   occupancy 0.25 as 16 warps of 91 at 16 per thread) its six row reductions and the
#   epilogue cost ~300 instructions per thread whatever it holds: 45.3 -> 33.9 per
#   element at K = 8192. Streaming (4 warps per 4096-column block, 95 registers,
#   occupancy 0.31), each pass's per-block work is shared by twice the elements:
#   40.9 -> 37.3 at K = 32768 when measured (35.0 with the later changes). Float32 logits in one block (145 registers), 64-bit
#   column offsets (227-255, spills on the split path) or the cap's tanh in one block
#   (197) would halve the occupancy or spill: those rows keep the default.
# - NCE + RCE in one block on COMPACT rows: 32, under a register cap (REGISTER_CAP).
# - RCE and SCE (CE + RCE) streaming on COMPACT rows: 32 under a register cap (about
#   34-35 instructions per element at K = 32768); at 16 ptxas held them at 80 registers
#   and spilled 4 bytes once RCE's gradient became a select.
DEFAULT_ELEMS_PER_THREAD = 16
COMPACT = "compact"  # an entry's third key: only for 2-byte, unit-stride, uncapped logits
ELEMS_PER_THREAD = {
    ("single", (C.A_CE, C.P_NONE)): 32,
    ("single", (C.A_NCE, C.P_NNCE), COMPACT): 32,
    ("single", (C.A_NCE, C.P_RCE), COMPACT): 32,
    ("blocks", (C.A_NCE, C.P_NNCE), COMPACT): 32,
    ("blocks", (C.A_CE, C.P_RCE), COMPACT): 32,
    ("blocks", (C.A_NONE, C.P_RCE), COMPACT): 32,
    ("blocks", (C.A_NFL, C.P_RCE)): 8,
    ("blocks", (C.A_NFL, C.P_AMSE)): 8,
}


# Register caps (ptxas ``maxnreg``) of policy entries of the row kernel (one block or
# streaming; not the split-row kernels), keyed as ELEMS_PER_THREAD. Under a cap the
# single-block kernel also recomputes what is cheap to recompute instead of holding it
# across the row's reductions (kernels/row_loss.py ``_grad_combine`` LEAN).
# - NCE + RCE in one block on COMPACT rows: 32 elements per thread (8 warps at 8192)
#   under a cap of 128 registers: 42.0 SASS instructions per element at K = 8192, no
#   spill, occupancy 0.25 (sm_90; 16 per thread: 49.6 at 85 registers; 32 uncapped:
#   149 registers, occupancy 0.125; capped without LEAN: 4 bytes spilled).
# - RCE and SCE streaming on COMPACT rows (32 per thread). Uncapped, ptxas gave the
#   persistent kernel 106 registers (occupancy 0.25) and the one-program-per-row kernel
#   80 and a 4-byte spill. RCE at 96: 90-94 registers, no spill, occupancy 0.31; SCE
#   spilled 12 bytes in the persistent kernel at 96 and 4 at 100, none at 104 (0.25;
#   the one-program-per-row kernel 92 registers, 0.31).
REGISTER_CAP = {
    ("single", (C.A_NCE, C.P_RCE), COMPACT): 128,
    ("blocks", (C.A_CE, C.P_RCE), COMPACT): 104,
    ("blocks", (C.A_NONE, C.P_RCE), COMPACT): 96,
}


def register_cap(path: str, loss=None, cfg: LaunchConfig | None = None, *,
                 compact: bool = False) -> int:
    """The register cap of ``path`` and ``loss`` (``REGISTER_CAP``), 0 for none; none when
    the config sets its own elements per thread (the cap belongs to the table's)."""
    cfg = cfg or _config
    if cfg.elems_per_thread or not compact:
        return 0
    return REGISTER_CAP.get((path, loss, COMPACT), 0)


def compact_rows(z3, softcap: bool = False) -> bool:
    """Rows of 2-byte logits with unit column stride, read without the soft cap: the
    policy table's COMPACT entries apply to them (fewer registers per element than
    float32 logits, 64-bit column offsets or the cap's tanh)."""
    return z3.element_size() == 2 and z3.stride(1) == 1 and not softcap


def elems_per_thread(path: str, loss=None, cfg: LaunchConfig | None = None, *,
                     compact: bool = False) -> int:
    """Block elements per thread for ``path`` ("single" or "blocks") and ``loss`` ((active,
    passive) codes, or None): the config's value if it sets one, else the policy table's
    (``ELEMS_PER_THREAD``: its COMPACT entry if the rows are, else the loss's), else
    ``DEFAULT_ELEMS_PER_THREAD``. ``compact``: 2-byte logits, unit column stride, no soft
    cap (``compact_rows``)."""
    cfg = cfg or _config
    if cfg.elems_per_thread:
        return cfg.elems_per_thread
    if compact and (path, loss, COMPACT) in ELEMS_PER_THREAD:
        return ELEMS_PER_THREAD[(path, loss, COMPACT)]
    return ELEMS_PER_THREAD.get((path, loss), DEFAULT_ELEMS_PER_THREAD)


def _warps(block: int, cfg: LaunchConfig | None = None, ept: int = 0) -> int:
    cfg = cfg or _config
    return max(4, min(cfg.max_warps, block // (32 * (ept or elems_per_thread("blocks", None,
                                                                                cfg)))))


def row_vec(z3, grad=None) -> int:
    """Elements per 16 bytes (the widest load) if every row of ``z3`` and ``grad``
    ((N, K, D) views) starts at a multiple of it and K is one too, else the largest power
    of two that does (1 for strided rows). The kernels pass it to the compiler as a
    divisibility fact (kernels/row_loss.py ``_aligned``); it must be exact, so it is
    computed from the strides, never assumed.
    """
    n, k, d = z3.shape
    if z3.stride(1) != 1 or (grad is not None and grad.stride(1) != 1):
        return 1
    offsets = [k, z3.stride(0)] + ([z3.stride(2)] if d > 1 else [])
    if grad is not None:
        offsets += [grad.stride(0)] + ([grad.stride(2)] if d > 1 else [])
    vec = 16 // z3.element_size()
    if grad is not None:
        vec = min(vec, 16 // grad.element_size())
    while vec > 1 and any(x % vec for x in offsets):
        vec //= 2
    return vec


def _device_guard(fn):
    """Run a launch helper under the CUDA device of its first argument (see _on_device)."""
    @functools.wraps(fn)
    def guarded(z, *args, **kwargs):
        with _on_device(z):
            return fn(z, *args, **kwargs)
    return guarded


def _on_device(t):
    """The launch guard: Triton launches on the *current* CUDA device, so every launch
    runs under the tensors' own device (tensors on cuda:1 while cuda:0 is current)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Plan:
    """How row_loss runs rows of K classes: the path, its block, warps and, for split
    rows, the columns per program and the number of chunks; a register cap where the
    policy sets one."""

    path: str  # "single" | "stream" | "split"
    block: int
    num_warps: int
    chunk: int = 0
    chunks: int = 1
    grid: int = 0  # streaming with a persistent grid: its number of programs (0: one per row)
    max_registers: int = 0  # a register cap for ptxas (REGISTER_CAP; 0: none)


def _cuda_index(device):
    """The index of a CUDA device (the current one for a bare "cuda"); None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere: the interpreter)."""
    index = _cuda_index(device)
    return 1 if index is None else _sm_count(index)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def l2_bytes(device) -> int:
    """L2 cache bytes of a CUDA device (0 elsewhere: the interpreter has none)."""
    index = _cuda_index(device)
    return 0 if index is None else _l2_bytes(index)


@functools.lru_cache(maxsize=None)
def _l2_bytes(index: int) -> int:
    return torch.cuda.get_device_properties(index).L2_cache_size


def stream_grid(rows: int, k: int, elem_bytes: int, sms: int, l2: int,
                cfg: LaunchConfig | None = None) -> int:
    """Programs of the persistent grid for streaming ``rows`` rows of ``k`` logits of
    ``elem_bytes`` bytes on a device with ``sms`` SMs and ``l2`` bytes of L2; 0 for one
    program per row (the grid would not be smaller than ``rows``, or no L2 is known).

    The model: a streaming program reads its row up to three times (stats1, stats2,
    gradient, kernels/row_loss.py), one row at a time, so the rows in flight are the
    programs, and the re-reads hit L2 while their bytes (programs x k x elem_bytes) fit
    in it. It takes the largest grid whose rows fill at most ``cfg.l2_fraction`` of the
    L2 (the rest is left to the gradient's writes, which go through the L2 too, and to
    other traffic), a whole number of programs per SM between 1 and
    ``cfg.max_programs_per_sm``. At least one per SM: when even that does not fit (rows
    over l2_fraction x L2 / SMs bytes), part of the re-reads come from DRAM (for rows
    that long and few, the split-row path takes over, ``plan``). It assumes every
    program is resident (true up to the blocks per SM the registers allow; beyond that
    fewer rows are in flight, not more) and that rows of one program do not share
    lines with another's. ``cfg.programs_per_sm`` > 0 fixes the programs per SM instead.
    """
    cfg = cfg or _config
    if cfg.programs_per_sm:
        grid = sms * cfg.programs_per_sm
    elif l2 <= 0:
        return 0
    else:
        fit = int(cfg.l2_fraction * l2) // max(1, k * elem_bytes)
        grid = sms * max(1, min(cfg.max_programs_per_sm, fit // max(1, sms)))
    return grid if grid < rows else 0


def plan(rows: int, k: int, cfg: LaunchConfig | None = None, *, inplace=False, sms=1,
         shard=False, l2=0, elem_bytes=2, loss=None, compact=False) -> Plan:
    """The launch plan under ``cfg`` (default: the current config) on a device with
    ``sms`` SMs and ``l2`` bytes of L2 (``cfg.sms``, ``cfg.l2_bytes`` override them), for
    logits of ``elem_bytes`` bytes. ``inplace``: the gradient overwrites the logits,
    which rules out split rows. ``shard``: a class-parallel shard of K classes, read as
    one chunk of the split-row kernels. Streaming rows run on the grid of
    ``stream_grid``. ``loss``: the (active, passive) term codes, for the per-loss
    elements per thread of each path (``ELEMS_PER_THREAD``; ``compact``: the rows are,
    see ``compact_rows``)."""
    cfg = cfg or _config
    ept = elems_per_thread("blocks", loss, cfg, compact=compact)
    if shard:
        block = min(cfg.block_k, triton.next_power_of_2(k))
        return Plan("split", block, _warps(block, cfg, ept), chunk=k, chunks=1)
    if k <= cfg.max_single_k:
        block = triton.next_power_of_2(k)
        ept1 = elems_per_thread("single", loss, cfg, compact=compact)
        return Plan("single", block, _warps(block, cfg, ept1),
                    max_registers=register_cap("single", loss, cfg, compact=compact))
    if rows <= cfg.split_max_rows and k > cfg.split_chunk and not inplace:
        chunk = max(cfg.split_chunk, triton.cdiv(k, cfg.max_chunks))
        chunk = triton.cdiv(chunk, cfg.block_k) * cfg.block_k
        return Plan("split", cfg.block_k, _warps(cfg.block_k, cfg, ept), chunk,
                    triton.cdiv(k, chunk))
    grid = stream_grid(rows, k, elem_bytes, cfg.sms or sms, cfg.l2_bytes or l2, cfg)
    return Plan("stream", cfg.block_k, _warps(cfg.block_k, cfg, ept), grid=grid,
                max_registers=register_cap("blocks", loss, cfg, compact=compact))


@_device_guard
def row_loss(z3, target, weight, hyper, den, *, active, passive, exact, ignore_index,
             compute_grad, grad_dtype=None, out=None, lse_out=None, softcap=False,
             z_loss=False):
    """Per-row loss (compute dtype, weighted, 0 on ignored rows) and, if asked, the gradient.

    z3: (N, K, D) view of the logits (any strides); target: (N*D,) int32/int64;
    weight: (K,) or None; hyper: compute-dtype vector (fused_anl/_hyper.py);
    den: 1-element tensor to divide the gradient by ('mean'), or None.
    The gradient, (N, K, D) contiguous in ``grad_dtype``, is that of
    ``sum(loss) / den`` (or ``sum(loss)`` when den is None). ``out``, an (N, K, D)
    tensor of any strides, receives it instead; it may be ``z3`` itself (the gradient
    overwrites the logits: every program reads its row, or block, before writing it,
    and the split-row path, whose programs read each other's columns, is not used).
    ``lse_out``: an (N*D,) compute-dtype buffer for each row's lse (0 on ignored rows).
    ``softcap``, ``z_loss``: the constants' H_SOFTCAP / H_Z_LOSS are set (compile-time
    flags: the logits are capped as they are read; the epilogue adds the z-loss).
    """
    n, k, d = z3.shape
    rows = n * d
    cdtype = _cdtype(z3)
    loss = torch.empty(rows, dtype=cdtype, device=z3.device)
    grad = None
    if compute_grad:
        grad = out if out is not None else torch.empty((n, k, d), dtype=grad_dtype or z3.dtype,
                                                       device=z3.device)
    if rows == 0:
        return loss, grad
    pl = plan(rows, k, inplace=out is not None and out.data_ptr() == z3.data_ptr(),
              sms=sm_count(z3.device), l2=l2_bytes(z3.device), elem_bytes=z3.element_size(),
              loss=(active, passive), compact=compact_rows(z3, bool(softcap)))
    loss_args = dict(ACTIVE=active, PASSIVE=passive, EXACT=exact, DT=_dt(z3),
                     VEC=row_vec(z3, grad), SOFTCAP=bool(softcap), Z_LOSS=bool(z_loss),
                     **_columns(z3, grad, pl.block))
    if pl.path in ("single", "stream"):
        row_loss_kernel[(pl.grid or rows,)](
            **_logits(z3), **_labels(target, weight, den, hyper, ignore_index),
            **_outputs(loss, grad, lse_out), ROWS=rows,
            COMPUTE_GRAD=compute_grad, SINGLE=pl.path == "single",
            NEEDS2=needs_stats2(active, passive), BLOCK_K=pl.block, PERSISTENT=pl.grid > 0,
            REPS=_lane_reps(z3, pl), num_warps=pl.num_warps, **COMPILE, **loss_args,
            **_register_cap(pl))
        return loss, grad
    part1 = _stats1_partials(z3, pl, hyper, softcap=bool(softcap))
    part2 = _stats2_partials(z3, target, hyper, part1, pl, active=active, passive=passive,
                             exact=exact, softcap=bool(softcap)
                             ) if needs_stats2(active, passive) else part1
    _finish(z3, target, weight, den, hyper, hyper, part1, part2, loss, grad, pl,
            ignore_index=ignore_index, sharded=False, compute_grad=compute_grad,
            lse_out=lse_out, **loss_args)
    return loss, grad


# Kernel arguments in labelled groups (the names are the kernels' parameters).

def _logits(z3):
    """The logits: an (N, K, D) view of any strides."""
    n, k, d = z3.shape
    s_n, s_k, s_d = z3.stride()
    return dict(z_ptr=z3, K=k, D=d, s_n=s_n, s_k=s_k, s_d=s_d)


def _labels(target, weight, den, hyper, ignore_index):
    """Labels, class (or, sharded, per-row) weights, the mean's divisor, constants."""
    return dict(t_ptr=target, w_ptr=weight if weight is not None else hyper, h_ptr=hyper,
                den_ptr=den if den is not None else hyper, ignore_index=ignore_index,
                HAS_WEIGHT=weight is not None, MEAN=den is not None)


def _outputs(loss, grad, lse=None):
    """Per-row loss, the gradient (never written without COMPUTE_GRAD) and, if given, the
    rows' lse."""
    g_n, g_k, g_d = grad.stride() if grad is not None else (0, 0, 0)
    return dict(loss_ptr=loss, g_ptr=grad if grad is not None else loss, g_n=g_n, g_k=g_k,
                g_d=g_d, lse_ptr=lse if lse is not None else loss, STORE_LSE=lse is not None)


def _register_cap(pl) -> dict:
    """The row kernel's launch arguments of a plan's register cap: ``maxnreg`` and, in one
    block, the kernel's LEAN (kernels/row_loss.py ``_grad_combine``)."""
    if not pl.max_registers:
        return {}
    return dict(maxnreg=pl.max_registers, LEAN=pl.path == "single")


def _columns(z3, grad, block):
    """How the kernels address a block's columns: EPT, the columns per tile row (16 bytes
    of logits, at most the block: kernels/row_loss.py ``_tile``), and whether the logits'
    and the gradient's column strides are 1 (then 32-bit column offsets: UNIT_K, UNIT_GK)."""
    return dict(EPT=min(block, 16 // z3.element_size()), UNIT_K=z3.stride(1) == 1,
                UNIT_GK=grad is None or grad.stride(1) == 1)


def _lane_reps(z3, pl) -> int:
    """Tile rows per thread of the streaming statistics (kernels/row_loss.py ``_lane_tile``):
    the block's 16-byte tile rows over the program's threads, at least 1 (a block smaller
    than the threads' tile rows is replicated across them)."""
    ept = _columns(z3, None, pl.block)["EPT"]
    return max(1, pl.block // ept // (32 * pl.num_warps))


def _stats1_partials(z3, pl, hyper=None, softcap=False):
    """Launch 1 of split rows and shards: (rows, chunks, STATS1) stats1 per chunk."""
    n, k, d = z3.shape
    part = torch.empty((n * d, pl.chunks, STATS1), dtype=_cdtype(z3), device=z3.device)
    split_stats1_kernel[(n * d, pl.chunks)](
        **_logits(z3), h_ptr=hyper if hyper is not None else part, part_ptr=part,
        CHUNK=pl.chunk, SOFTCAP=softcap, BLOCK_K=pl.block, DT=_dt(z3), VEC=row_vec(z3),
        EPT=_columns(z3, None, pl.block)["EPT"], REPS=_lane_reps(z3, pl),
        UNIT_K=z3.stride(1) == 1, num_warps=pl.num_warps, **COMPILE)
    return part


def _stats2_partials(z3, target, hyper, parts1, pl, *, active, passive, exact, softcap=False):
    """Launch 2: (rows, chunks, STATS2) lse-dependent sums per chunk, each program first
    combining the row's stats1 partials (one per chunk, or per rank for shards)."""
    n, k, d = z3.shape
    part2 = torch.empty((n * d, pl.chunks, STATS2), dtype=parts1.dtype, device=z3.device)
    split_stats2_kernel[(n * d, pl.chunks)](
        **_logits(z3), t_ptr=target, h_ptr=hyper, part1_ptr=parts1, part2_ptr=part2,
        CHUNK=pl.chunk, NPART1=parts1.shape[1], SOFTCAP=softcap,
        ACTIVE=active, PASSIVE=passive, EXACT=exact, BLOCK_K=pl.block,
        P_BLOCK=triton.next_power_of_2(parts1.shape[1]), DT=_dt(z3), VEC=row_vec(z3),
        EPT=_columns(z3, None, pl.block)["EPT"], UNIT_K=z3.stride(1) == 1,
        num_warps=pl.num_warps, **COMPILE)
    return part2


def _finish(z3, target, weight, den, hyper, zy, parts1, parts2, loss, grad, pl, *,
            ignore_index, sharded, compute_grad, ACTIVE, PASSIVE, EXACT, DT, VEC, EPT, UNIT_K,
            UNIT_GK, SOFTCAP=False, Z_LOSS=False, lse_out=None):
    """Launch 3: the loss (chunk 0 of each row) and each chunk's gradient columns."""
    n, k, d = z3.shape
    split_finish_kernel[(n * d, pl.chunks if compute_grad else 1)](
        **_logits(z3), **_labels(target, weight, den, hyper, ignore_index),
        **_outputs(loss, grad, lse_out), zy_ptr=zy, part1_ptr=parts1, part2_ptr=parts2,
        CHUNK=pl.chunk, NPART1=parts1.shape[1], NPART2=parts2.shape[1],
        SHARDED=sharded, COMPUTE_GRAD=compute_grad,
        NEEDS2=needs_stats2(ACTIVE, PASSIVE), BLOCK_K=pl.block,
        P_BLOCK=triton.next_power_of_2(max(parts1.shape[1], parts2.shape[1])),
        ACTIVE=ACTIVE, PASSIVE=PASSIVE, EXACT=EXACT, SOFTCAP=SOFTCAP, Z_LOSS=Z_LOSS, DT=DT,
        VEC=VEC, EPT=EPT, UNIT_K=UNIT_K, UNIT_GK=UNIT_GK, num_warps=pl.num_warps,
        **COMPILE)


# ------------------------------------------------ class-parallel shards (no communication here)
# fused_anl/distributed.py runs: shard_stats1 -> all_gather -> shard_stats2 -> all_reduce
# -> shard_finish. Each step reads this rank's (N, K_local, D) shard once, as one chunk
# of the split-row kernels (plan(..., shard=True)).


@_device_guard
def shard_stats1(z3):
    """(rows, 1, STATS1) stats1 (max, sum exp, sum (z - max), #present) of the local shard."""
    n, k, d = z3.shape
    if n * d == 0:
        return torch.empty((0, 1, STATS1), dtype=_cdtype(z3), device=z3.device)
    return _stats1_partials(z3, plan(n * d, k, shard=True, compact=compact_rows(z3)))


@_device_guard
def shard_stats2(z3, y_local, hyper, parts1, *, active, passive, exact):
    """(rows, 1, STATS2) stats2 sums of the local shard, given all ranks' stats1 (rows, W, STATS1)."""
    n, k, d = z3.shape
    if n * d == 0:
        return torch.empty((0, 1, STATS2), dtype=parts1.dtype, device=z3.device)
    return _stats2_partials(z3, y_local, hyper, parts1,
                            plan(n * d, k, shard=True, loss=(active, passive),
                                 compact=compact_rows(z3)),
                            active=active, passive=passive, exact=exact)


@_device_guard
def shard_finish(z3, y_local, row_weight, zy, hyper, den, parts1, parts2, *, active, passive,
                 exact, ignore_index, compute_grad, z_loss=False):
    """Per-row loss and this shard's gradient columns from the combined statistics."""
    n, k, d = z3.shape
    loss = torch.empty(n * d, dtype=parts1.dtype, device=z3.device)
    grad = torch.empty((n, k, d), dtype=z3.dtype, device=z3.device) if compute_grad else None
    if n * d:
        pl = plan(n * d, k, shard=True, loss=(active, passive), compact=compact_rows(z3))
        _finish(z3, y_local, row_weight, den, hyper, zy, parts1, parts2, loss, grad, pl,
                ignore_index=ignore_index, sharded=True, compute_grad=compute_grad,
                ACTIVE=active, PASSIVE=passive, EXACT=exact, DT=_dt(z3), VEC=row_vec(z3, grad),
                Z_LOSS=bool(z_loss), **_columns(z3, grad, pl.block))
    return loss, grad


def _dt(z):
    return tl.float64 if z.dtype == torch.float64 else tl.float32


def _cdtype(z):
    return torch.float64 if z.dtype == torch.float64 else torch.float32


# ------------------------------------------------ backward: scale the stored gradient


def scale_(grad, grad_output):
    """``grad *= grad_output`` in place, for ``grad`` (N, K, D) contiguous and
    ``grad_output`` a 1-element tensor (a no-op on the device when it is 1) or one
    value per sample (N * D). Launched on the gradient's device; no host sync."""
    from .scale import scale_kernel
    n, k, d = grad.shape
    numel = grad.numel()
    if numel == 0:
        return grad
    block = SCALE_BLOCK
    grid = scale_grid(numel, sm_count(grad.device))
    with _on_device(grad):
        scale_kernel[(grid,)](
            grad, grad_output, numel, k * d, d, PER_ROW=grad_output.numel() != 1, BLOCK=block,
            DT=_dt(grad), num_warps=8, **COMPILE)
    return grad


SCALE_BLOCK = 4096  # elements per block of the backward kernel (8 warps: 16 per thread)


def scale_grid(numel: int, sms: int, cfg: LaunchConfig | None = None) -> int:
    """Programs of the backward kernel (kernels/scale.py) for ``numel`` gradient
    elements on ``sms`` SMs: ``cfg.scale_programs_per_sm`` per SM (enough to fill them:
    8 blocks of 8 warps are 64 warps, an sm_90 SM's limit, at its 30 registers), at
    most one per block. The kernel walks the blocks grid-stride, so with grad_output
    == 1 only this many programs start and exit, whatever the gradient's size."""
    cfg = cfg or _config
    return max(1, min(triton.cdiv(numel, SCALE_BLOCK), (cfg.sms or sms) * cfg.scale_programs_per_sm))
