"""The torch backend's chunk size (``fused_anl._torch_backend.CHUNK_ELEMENTS``) on the CPU.

``python benchmarks/cpu_chunks.py THREADS KS LOSSES CHUNKS REPS``, for example
``python benchmarks/cpu_chunks.py 2 1000,32768 ce,anl_ce 1048576,4194304,16777216 5``:
fp32 logits ``3 * N(0, 1)`` of shape (4096, K), forward+backward of the mean loss, one
warm-up call each, then REPS rounds in which the chunk sizes, the eager reference and (for
``ce``) ``F.cross_entropy`` alternate; prints the median of each and the load average.
"""
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


def call(fn, z, t):
    z.grad = None
    t0 = time.perf_counter()
    fn(z, t).backward()
    return time.perf_counter() - t0


def main(threads, ks, losses, chunks, reps, n=4096):
    torch.set_num_threads(threads)
    for k in ks:
        g = torch.Generator().manual_seed(0)
        z = (torch.randn(n, k, generator=g) * 3).requires_grad_(True)
        t = torch.randint(0, k, (n,), generator=g)
        for loss in losses:
            impls = {}
            for ce in chunks:
                def fused(z, t, ce=ce, loss=loss):
                    TB.CHUNK_ELEMENTS = ce
                    return getattr(fused_anl, loss)(z, t, backend="torch")
                impls[f"fused 2^{ce.bit_length() - 1}"] = fused
            impls["eager"] = getattr(fused_anl.reference, loss)
            if loss == "ce":
                impls["F.ce"] = F.cross_entropy
            for f in impls.values():
                call(f, z, t)
            ts = {name: [] for name in impls}
            for _ in range(reps):
                for name, f in impls.items():
                    ts[name].append(call(f, z, t))
            with open("/proc/loadavg") as fh:
                load = fh.read().split()[0]
            print(k, loss, "  ".join(f"{name}={1e3 * statistics.median(v):.0f}ms"
                                     for name, v in ts.items()), "load", load, flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) != 5 or a[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if a and a[0] in ("-h", "--help") else 2)
    main(int(a[0]), [int(x) for x in a[1].split(",")], a[2].split(","),
         [int(x) for x in a[3].split(",")], int(a[4]))
