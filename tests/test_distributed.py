"""Class-parallel losses over gloo: 2 and 4 CPU processes, each holding a class shard,
must reproduce the single-process loss and the matching slice of its gradient.

The ranks of a test meet through a FileStore in a temporary directory of their own
(dist_worker._init), so no port is chosen, released and raced for. They are started
by a fork server that has imported torch and fused_anl once, instead of each rank
importing them again: on a busy 2-core machine that import, not the check, was most
of the time of a test.
"""
import multiprocessing
import os
import tempfile

import pytest
import torch.multiprocessing as mp

import fused_anl

import dist_worker

ALL = sorted(fused_anl.LOSSES)

multiprocessing.set_forkserver_preload(["torch", "fused_anl", "dist_worker"])


def _spawn_workers(fn, world, *args):
    """Run fn(rank, world, store, *args) on `world` processes; raise the first failure
    (with its traceback) if any rank fails."""
    with tempfile.TemporaryDirectory(prefix="fused_anl_gloo_") as d:
        mp.start_processes(fn, args=(world, os.path.join(d, "store"), *args), nprocs=world,
                           join=True, start_method="forkserver")


def _spawn(world, names, backends, boundary_labels=True):
    _spawn_workers(dist_worker.run, world, names, backends, boundary_labels)


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
    _spawn_workers(dist_worker.run_linear, 2, backend)


def test_class_parallel_example_reproduces_single_process_curve():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "examples" / "class_parallel.py"), "--steps", "5"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "max |difference|" in out.stdout


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dtensor_logits_sharded_on_classes(backend):
    _spawn_workers(dist_worker.run_dtensor, 2, backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_anl_ce_er_on_class_shards(backend):
    _spawn_workers(dist_worker.run_anl_ce_er, 2, backend)


def test_options_on_class_shards():
    """z_loss, label smoothing and return_lse on 2 ranks, both backends."""
    _spawn_workers(dist_worker.run_options, 2)
