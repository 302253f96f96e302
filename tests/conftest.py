"""Test set-up: run the Triton kernels under the interpreter when there is no GPU.

TRITON_INTERPRET must be set before the kernels are imported (Triton reads it when
the @triton.jit functions are defined), hence here, before anything imports
fused_anl. On a CUDA machine the kernels are compiled and run on the GPU.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the source tree

import pytest  # noqa: E402

import fused_anl  # noqa: E402
from fused_anl.kernels import launch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Launch policies that force each kernel path on small inputs. Block sizes are tiny
# so that K = 37 spans several blocks (streaming) and several chunks (split rows).
PATHS = {
    "single": dict(),
    "stream": dict(max_single_k=16, block_k=8),
    "split": dict(max_single_k=16, block_k=8, split_chunk=16, split_max_rows=1 << 30),
}
# Streaming on a persistent grid: 3 programs walk the rows (sms=1: on a GPU too). The
# loop wraps the same per-row code as "stream", so it is tested on fewer cases.
PERSISTENT = dict(max_single_k=16, block_k=8, programs_per_sm=3, sms=1)


@pytest.fixture(params=list(PATHS))
def kernel_path(request):
    with launch.config(**PATHS[request.param]):
        yield request.param


@pytest.fixture
def device():
    return DEVICE


# Parallel runs (scripts/test.sh runs pytest-xdist workers): each worker gets its share
# of the cores, so that the workers' intra-op threads do not oversubscribe the machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (_cores or 1) // _WORKERS))

# Modules whose expensive module-scoped fixture (a compile for sm_90, the GPU check's
# rehearsal) must run once: all their tests go to one worker (--dist loadgroup).
_ONE_WORKER = ("test_gpu_check", "test_gpu_compile")


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__ if item.module is not None else ""
        if name in _ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(name))
