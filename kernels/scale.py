"""Backward's only work: the gradient stored by forward times ``grad_output``, in place.

Forward already wrote the gradient of the reduced loss, so backward multiplies it by
``grad_output`` (a scalar, or one value per sample for ``reduction="none"``). A scalar
``grad_output`` of exactly 1 (``loss.backward()``) needs no pass at all: every program
reads the scalar first and returns when it is 1, so the ``N x K`` gradient is neither
read nor written, and the host never learns the value (no synchronisation). The grid
is sized to the device (kernels/launch.py ``scale_``: a few programs per SM, each
walking blocks ``pid, pid + grid, ...``), so that early exit costs a few hundred
programs, not one per block of the gradient.
"""
import triton
import triton.language as tl


@triton.jit
def _scale_block(g_ptr, offs, go, mask, DT: tl.constexpr):
    g = tl.load(g_ptr + offs, mask=mask)
    tl.store(g_ptr + offs, (g.to(DT) * go).to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def scale_kernel(g_ptr, go_ptr, numel, KD, D, PER_ROW: tl.constexpr, BLOCK: tl.constexpr,
                 DT: tl.constexpr):
    """g[i] *= go (scalar) or go[row(i)], for g contiguous of shape (N, K, D):
    element i belongs to sample ``(i // (K D)) D + i % D``. Grid-stride: program pid
    handles blocks pid, pid + grid, ... of BLOCK elements (int64 offsets)."""
    pid = tl.program_id(0)
    grid = tl.num_programs(0)
    nblocks = tl.cdiv(numel, BLOCK)
    if PER_ROW:
        for b in range(pid, nblocks, grid):
            offs = tl.cast(b, tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < numel
            rows = (offs // KD) * D + offs % D
            go = tl.load(go_ptr + rows, mask=mask, other=1.0).to(DT)
            _scale_block(g_ptr, offs, go, mask, DT)
    else:
        go = tl.load(go_ptr).to(DT)
        if go != 1.0:
            for b in range(pid, nblocks, grid):
                offs = tl.cast(b, tl.int64) * BLOCK + tl.arange(0, BLOCK)
                _scale_block(g_ptr, offs, go, offs < numel, DT)
