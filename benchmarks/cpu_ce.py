"""Plain cross entropy on the CPU path: the torch backend's CE routine against its general path.

``python benchmarks/cpu_ce.py [--threads 1,2] [--ks 1000,32768] [--n 4096] [--reps 11]``

fp32 logits ``3 * N(0, 1)`` of shape (N, K), uniform labels, forward+backward of the mean
loss. In each round these alternate (so a change in the shared machine's load hits them
alike): ``fused`` (``fused_anl.ce``, ``backend="torch"``: the CE routine
``_torch_backend._ce_rows``), ``general`` (the same call with the CE routine's gate
disabled: the general path every other loss takes, i.e. CE before the routine),
``F.ce`` (``torch.nn.functional.cross_entropy``) and ``eager``
(``fused_anl.reference.ce``). One warm-up call each; prints the median of each, the
ratios fused / F.ce and general / F.ce, and the 1-minute load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fused_anl  # noqa: E402
from fused_anl import _torch_backend as TB  # noqa: E402

A_CE = TB.A_CE


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def fused(z, t):
    TB.A_CE = A_CE
    return fused_anl.ce(z, t, backend="torch")


def general(z, t):
    TB.A_CE = -1  # the gate never matches
    try:
        return fused_anl.ce(z, t, backend="torch")
    finally:
        TB.A_CE = A_CE


IMPLS = {"fused": fused, "general": general, "F.ce": F.cross_entropy,
         "eager": fused_anl.reference.ce}


def call(fn, z, t):
    z.grad = None
    t0 = time.perf_counter()
    loss = fn(z, t)
    loss.backward()  # loss and backward both inside the timed region
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="torch.set_num_threads values")
    ap.add_argument("--ks", default="1000,32768", help="class counts")
    ap.add_argument("--n", type=int, default=4096, help="rows")
    ap.add_argument("--reps", type=int, default=11, help="timed rounds (median)")
    a = ap.parse_args(argv)
    for th in [int(x) for x in a.threads.split(",")]:
        torch.set_num_threads(th)
        for k in [int(x) for x in a.ks.split(",")]:
            g = torch.Generator().manual_seed(0)
            z = (torch.randn(a.n, k, generator=g) * 3).requires_grad_(True)
            t = torch.randint(0, k, (a.n,), generator=g)
            load0 = loadavg()
            for f in IMPLS.values():
                call(f, z, t)
            ts = {name: [] for name in IMPLS}
            for _ in range(a.reps):
                for name, f in IMPLS.items():
                    ts[name].append(call(f, z, t))
            med = {name: 1e3 * statistics.median(v) for name, v in ts.items()}
            print(f"threads={th} K={k} " + "  ".join(f"{n}={m:.1f}ms" for n, m in med.items())
                  + f"  fused/F.ce={med['fused'] / med['F.ce']:.2f}x"
                  + f"  general/F.ce={med['general'] / med['F.ce']:.2f}x"
                  + f"  load {load0} -> {loadavg()}", flush=True)


if __name__ == "__main__":
    main()
