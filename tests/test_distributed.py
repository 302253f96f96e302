"""Class-parallel losses over gloo: 2 and 4 CPU processes, each holding a class shard,
must reproduce the single-process loss and the matching slice of its gradient."""
import socket

import pytest
import torch.multiprocessing as mp

import fused_anl

import dist_worker

ALL = sorted(fused_anl.LOSSES)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, names, backends, boundary_labels=True):
    mp.spawn(dist_worker.run, args=(world, _port(), names, backends, boundary_labels),
             nprocs=world, join=True)


def test_two_ranks_every_loss_torch_backend():
    _spawn(2, ALL, ["torch"])


def test_two_ranks_every_loss_triton_kernels():
    _spawn(2, ALL, ["triton"])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_four_ranks(backend):
    _spawn(4, ["anl_ce", "anl_fl", "nce_rce", "ce", "nnfl"], [backend])


def test_which_losses_need_a_second_collective():
    """The workers count the collectives of every forward (dist_worker.run): one
    all_gather, plus one all_reduce exactly for the terms with lse-dependent sums."""
    from fused_anl.kernels import _codes as C
    one = {n for n, s in fused_anl.LOSSES.items() if not C.needs_stats2(s.active, s.passive)}
    assert one == {"ce", "fl", "nce", "mae", "gce", "agce", "aul", "ael", "nce_mae", "nce_agce",
                   "nce_aul", "nce_ael"}


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_linear_loss_with_sharded_weight(backend):
    mp.spawn(dist_worker.run_linear, args=(2, _port(), backend), nprocs=2, join=True)


def test_class_parallel_example_reproduces_single_process_curve():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "examples" / "class_parallel.py"), "--steps", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "max |difference|" in out.stdout
