"""The launch policy (kernels/launch.py) as pure functions of the device: the persistent
streaming grid sized from the L2 and SM count, the backward kernel's grid; and the
kernels run on the grids it picks (under the interpreter with fake device figures)."""
import types

import pytest
import torch

import fused_anl
from fused_anl.kernels import launch

from conftest import DEVICE
from helpers import assert_close_to_reference, edge_case_batch, loss_and_grad

MIB = 2**20
H100 = dict(sms=132, l2=50 * MIB)


@pytest.mark.parametrize("k,grid", [(128256, 132), (65536, 132), (32768, 396), (8192, 1056)])
def test_stream_grid_fits_the_l2(k, grid):
    """bf16 rows on an H100: whole programs per SM, rows in flight within half the L2
    (one per SM at least, even when that is more: K = 128256, 250 KiB rows)."""
    cfg = launch.LaunchConfig()
    g = launch.stream_grid(16384, k, 2, H100["sms"], H100["l2"], cfg)
    assert g == grid and g % H100["sms"] == 0
    per_sm = g // H100["sms"]
    assert 1 <= per_sm <= cfg.max_programs_per_sm
    if per_sm > 1:
        assert g * k * 2 <= cfg.l2_fraction * H100["l2"]
        # one more program per SM would not fit
        assert (g + H100["sms"]) * k * 2 > cfg.l2_fraction * H100["l2"] or per_sm == cfg.max_programs_per_sm


def test_stream_grid_edges():
    cfg = launch.LaunchConfig()
    assert launch.stream_grid(100, 32768, 2, 132, 50 * MIB, cfg) == 0  # no fewer programs than rows
    assert launch.stream_grid(16384, 32768, 2, 132, 0, cfg) == 0  # no L2 known (off CUDA)
    assert launch.stream_grid(16384, 32768, 4, 132, 50 * MIB, cfg) == 132  # fp32: 128 KiB rows
    fixed = launch.LaunchConfig(programs_per_sm=2)
    assert launch.stream_grid(16384, 32768, 2, 132, 0, fixed) == 264
    assert launch.stream_grid(16384, 32768, 2, 132, 50 * MIB,
                              launch.LaunchConfig(l2_fraction=0.25)) == 132  # 200 rows fit


def test_plan_uses_the_stream_grid_and_config_overrides():
    pl = launch.plan(16384, 32768, sms=132, l2=50 * MIB, elem_bytes=2)
    assert pl.path == "stream" and pl.grid == 396
    assert launch.plan(16384, 32768, sms=132, l2=0).grid == 0
    with launch.config(sms=4, l2_bytes=16 * 32768 * 2):  # 8 rows fit in half: 2 per SM
        assert launch.plan(16384, 32768, sms=132, l2=50 * MIB).grid == 8


def test_device_figures_come_from_the_device_properties(monkeypatch):
    """l2_bytes / sm_count read torch.cuda.get_device_properties (fake ones here)."""
    props = types.SimpleNamespace(L2_cache_size=40 * MIB, multi_processor_count=108)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert launch._l2_bytes.__wrapped__(0) == 40 * MIB
    assert launch._sm_count.__wrapped__(0) == 108
    assert launch.l2_bytes("cpu") == 0 and launch.sm_count("cpu") == 1


def test_scale_grid():
    cfg = launch.LaunchConfig()
    assert launch.scale_grid(10, 132, cfg) == 1
    assert launch.scale_grid(5 * launch.SCALE_BLOCK, 132, cfg) == 5
    assert launch.scale_grid(16384 * 32768, 132, cfg) == 132 * cfg.scale_programs_per_sm


@pytest.mark.parametrize("name", ["anl_ce", "nce_rce", "ce"])
def test_kernels_on_the_l2_sized_grid(name):
    """The policy's persistent grid under the interpreter: 37 fp32 logits per row (148
    bytes), L2 of 600 bytes on 1 SM: 2 rows fit in half of it, so 2 programs walk 7 rows."""
    cfg = dict(max_single_k=16, block_k=8, sms=1, l2_bytes=600)
    with launch.config(**cfg):
        assert launch.plan(7, 37, elem_bytes=4).grid == 2
        z, t = edge_case_batch(7, 37, dtype=torch.float32, device=DEVICE, seed=5)
        v, g = loss_and_grad(getattr(fused_anl, name), z, t, backend="triton", reduction="none")
    assert_close_to_reference(name, z, t, value=v, grad=g, reduction="none")


@pytest.mark.parametrize("per_row", [False, True])
def test_backward_kernel_walks_its_blocks(per_row):
    """The backward kernel on fewer programs than blocks (grid-stride): 3 blocks and a
    tail on 2 programs, scalar and per-sample grad_output."""
    n, k = 3, launch.SCALE_BLOCK + 7  # 3 rows: 3 x 4103 elements, 4 blocks
    g = torch.randn(n, k, 1, device=DEVICE)
    go = torch.rand(n, device=DEVICE) if per_row else torch.tensor([2.5], device=DEVICE)
    want = g * (go.reshape(n, 1, 1) if per_row else go)
    with launch.config(sms=1, scale_programs_per_sm=2):
        assert launch.scale_grid(g.numel(), 1) == 2
        launch.scale_(g, go)
    torch.testing.assert_close(g, want, rtol=0, atol=0)


def test_per_loss_elements_per_thread():
    """Each path takes the policy table's elements per thread for its loss
    (launch.ELEMS_PER_THREAD: NFL + RCE fewer on the streaming and split paths, plain CE
    and, on compact rows, ANL-CE more in one block), the default for the others; a config that sets
    elems_per_thread applies it to every loss and path."""
    from fused_anl.kernels import _codes as C

    cfg = launch.LaunchConfig()
    default = launch.DEFAULT_ELEMS_PER_THREAD
    nfl_rce, anl_ce, ce = (C.A_NFL, C.P_RCE), (C.A_NCE, C.P_NNCE), (C.A_CE, C.P_NONE)
    ept = launch.ELEMS_PER_THREAD[("blocks", nfl_rce)]
    assert ept < default < launch.ELEMS_PER_THREAD[("single", ce)]
    stream = launch.plan(16384, 32768, cfg, loss=nfl_rce)
    assert stream.path == "stream" and stream.num_warps == cfg.block_k // (32 * ept)
    assert launch.plan(16384, 32768, cfg, loss=anl_ce).num_warps == cfg.block_k // (
        32 * default)
    assert launch.plan(16384, 32768, cfg, loss=ce).num_warps == cfg.block_k // (32 * default)
    split = launch.plan(4, 8 * cfg.split_chunk, cfg, loss=nfl_rce)
    assert split.path == "split" and split.num_warps == stream.num_warps
    shard = launch.plan(4, 4096, cfg, shard=True, loss=nfl_rce)
    assert shard.num_warps == launch._warps(shard.block, cfg, ept)
    single = launch.plan(16, 8192, cfg, loss=nfl_rce)
    assert single.path == "single" and single.num_warps == 8192 // (32 * default)
    single_ce = launch.plan(16, 8192, cfg, loss=ce)
    assert single_ce.num_warps == 8192 // (32 * launch.ELEMS_PER_THREAD[("single", ce)])
    # ANL-CE: more per thread only on compact rows (2-byte logits, unit column stride,
    # no soft cap); float32, strided or capped rows keep the default
    for path, k in (("single", 8192), ("blocks", 32768)):
        compact = launch.ELEMS_PER_THREAD[(path, anl_ce, launch.COMPACT)]
        assert compact > default
        block = min(k, cfg.block_k) if path == "blocks" else k
        assert launch.plan(16, k, cfg, loss=anl_ce, compact=True).num_warps == block // (
            32 * compact)
        assert launch.plan(16, k, cfg, loss=anl_ce).num_warps == block // (32 * default)
    z = torch.empty(2, 100, 1, dtype=torch.bfloat16)
    assert launch.compact_rows(z) and not launch.compact_rows(z, softcap=True)
    assert not launch.compact_rows(z.float())
    assert not launch.compact_rows(torch.empty(2, 100, 3, dtype=torch.bfloat16))  # D = 3
    with launch.config(elems_per_thread=4):  # a set value applies to every loss and path
        assert launch.plan(16384, 32768, loss=nfl_rce).num_warps == cfg.block_k // (32 * 4)
        assert launch.plan(16, 8192, loss=ce).num_warps == min(cfg.max_warps, 8192 // (32 * 4))


def test_register_cap_of_the_policy():
    """A policy entry's register cap (launch.REGISTER_CAP: NCE + RCE in one block, RCE and
    SCE streaming, on compact rows) reaches the plan, and the row kernel's launch as
    ``maxnreg``, with the kernel's LEAN flag in one block; no other loss or path has one,
    nor an entry when the config sets its own elements per thread. (The interpreter
    ignores ``maxnreg``; LEAN's arithmetic runs in every bf16 NCE+RCE single-block test,
    tests/test_losses.py and tests/test_trust.py.)"""
    from fused_anl.kernels import _codes as C

    nce_rce, anl_ce = (C.A_NCE, C.P_RCE), (C.A_NCE, C.P_NNCE)
    cap = launch.REGISTER_CAP[("single", nce_rce, launch.COMPACT)]
    single = launch.plan(16, 8192, loss=nce_rce, compact=True)
    assert single.path == "single" and single.max_registers == cap
    assert single.num_warps == 8192 // (32 * launch.ELEMS_PER_THREAD[
        ("single", nce_rce, launch.COMPACT)])
    assert launch._register_cap(single) == dict(maxnreg=cap, LEAN=True)
    assert launch.plan(16, 8192, loss=nce_rce).max_registers == 0  # float32 / strided rows
    assert launch.plan(16, 8192, loss=anl_ce, compact=True).max_registers == 0
    assert launch.plan(16384, 32768, loss=nce_rce, compact=True).max_registers == 0
    assert launch._register_cap(launch.plan(16, 8192, loss=anl_ce)) == {}
    sce = (C.A_CE, C.P_RCE)
    stream = launch.plan(16384, 32768, loss=sce, compact=True)
    assert stream.path == "stream" and stream.max_registers == launch.REGISTER_CAP[
        ("blocks", sce, launch.COMPACT)]
    assert launch._register_cap(stream) == dict(maxnreg=stream.max_registers, LEAN=False)
    assert launch.plan(4, 8 * 32768, loss=sce, compact=True).max_registers == 0  # split
    with launch.config(elems_per_thread=16):
        assert launch.plan(16, 8192, loss=nce_rce, compact=True).max_registers == 0

    seen = {}
    real = launch.row_loss_kernel

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                seen.update(kwargs)
                return real[grid](*args, **kwargs)
            return run

    z = torch.randn(3, 37, dtype=torch.bfloat16, device=DEVICE)
    t = torch.tensor([0, 36, 5], device=DEVICE)
    launch.row_loss_kernel = Spy()
    try:
        fused_anl.nce_rce(z, t, backend="triton")
    finally:
        launch.row_loss_kernel = real
    assert seen["maxnreg"] == cap and seen["LEAN"] is True
