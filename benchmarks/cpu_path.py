"""The CPU path (backend "torch") against what a user would otherwise run, every loss.

``python benchmarks/cpu_path.py [--losses ce,anl_ce] [--ks 1000,32768] [--threads 1,2]
[--reps 5] [--memory] [--out DIR]``

For each thread count (``torch.set_num_threads``), K and loss: fp32 logits
``3 * N(0, 1)`` of shape (N, K), uniform labels, forward+backward of the mean loss
(``loss = fn(z, t); loss.backward()``) for ``fused`` (``fused_anl.<loss>``,
``backend="torch"``), ``eager`` (``fused_anl.reference.<loss>``, autograd) and, for
``ce``, ``torch_ce`` (``F.cross_entropy``). One warm-up call each, then ``--reps``
rounds in which the implementations alternate (so a change in the machine's load hits
them alike); the figure is the median of the rounds. ``/proc/loadavg`` is read before
and after every case, since the machine may be shared. ``--memory``: peak extra memory
(fresh process, ``benchmarks/common.py``'s ``peak_extra_cpu``) of fused and eager
fwd+bwd at the largest K for ``--memory-losses``. Writes ``results.json`` and
``results.md`` to ``--out`` (default: print only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fused_anl  # noqa: E402
from fused_anl import _registry  # noqa: E402


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "n/a"


def impls(loss):
    fused_fn = getattr(fused_anl, loss)
    out = {"fused": lambda z, t: fused_fn(z, t, backend="torch"),
           "eager": getattr(fused_anl.reference, loss)}
    if loss == "ce":
        out["torch_ce"] = F.cross_entropy
    return out


def one_call(fn, z, t):
    z.grad = None
    t0 = time.perf_counter()
    fn(z, t).backward()
    return time.perf_counter() - t0


def run_case(loss, n, k, reps):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(n, k, generator=g) * 3).requires_grad_(True)
    t = torch.randint(0, k, (n,), generator=g)
    fns = impls(loss)
    load0 = loadavg()
    for fn in fns.values():
        one_call(fn, z, t)  # warm-up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(one_call(fn, z, t))
    z.grad = None
    return [dict(loss=loss, n=n, k=k, impl=name, ms=1e3 * statistics.median(v),
                 ms_all=[round(1e3 * x, 3) for x in v], load_before=load0, load_after=loadavg())
            for name, v in times.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--losses", default=",".join(_registry.LOSSES))
    ap.add_argument("--ks", default="1000,32768")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds per case (median)")
    ap.add_argument("--reps-large", type=int, default=3, help="rounds when K >= 32768")
    ap.add_argument("--memory", action="store_true", help="peak extra memory at the largest K")
    ap.add_argument("--memory-losses", default="ce,anl_ce")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    losses = a.losses.split(",")
    ks = [int(x) for x in a.ks.split(",")]
    rows = []
    for th in [int(x) for x in a.threads.split(",")]:
        torch.set_num_threads(th)
        for k in ks:
            for loss in losses:
                reps = a.reps_large if k >= 32768 else a.reps
                for r in run_case(loss, a.n, k, reps):
                    r["threads"] = th
                    rows.append(r)
                    print(f"threads={th} K={k} {loss:9s} {r['impl']:8s} {r['ms']:10.2f} ms "
                          f"(load {r['load_before']} -> {r['load_after']})", flush=True)
    mem = []
    if a.memory:
        from benchmarks.common import peak_extra_cpu
        for loss in a.memory_losses.split(","):
            for impl in ("fused", "eager"):
                m = peak_extra_cpu(loss, impl, (a.n, max(ks)), torch.float32, "fwd+bwd")
                mem.append(dict(loss=loss, impl=impl, n=a.n, k=max(ks), extra_mib=m["extra"] / 2**20,
                                grads_mib=m["grads"] / 2**20, method=m["method"]))
                print(f"memory {loss} {impl}: {m['extra'] / 2**20:.1f} MiB", flush=True)
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M"), machine=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), torch=torch.__version__, n=a.n, argv=sys.argv[1:])
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(dict(meta=meta, rows=rows, memory=mem), indent=1))
        (out / "results.md").write_text(report(meta, rows, mem))
    return rows, mem


def report(meta, rows, mem):
    lines = [f"| threads | K | loss | fused ms | eager ms | eager / fused | F.cross_entropy ms | fused / F.ce | load (1 min) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    key = {}
    for r in rows:
        key[(r["threads"], r["k"], r["loss"], r["impl"])] = r
    for (th, k, loss, impl), r in key.items():
        if impl != "fused":
            continue
        e = key.get((th, k, loss, "eager"))
        c = key.get((th, k, loss, "torch_ce"))
        lines.append(f"| {th} | {k} | {loss} | {r['ms']:.2f} | {e['ms']:.2f} | {e['ms'] / r['ms']:.2f}x | "
                     + (f"{c['ms']:.2f} | {r['ms'] / c['ms']:.2f}x" if c else " | ")
                     + f" | {r['load_before']} -> {r['load_after']} |")
    if mem:
        lines += ["", "| loss | impl | N | K | peak extra MiB (gradient included) |", "|---|---|---:|---:|---:|"]
        lines += [f"| {m['loss']} | {m['impl']} | {m['n']} | {m['k']} | {m['extra_mib']:.1f} |" for m in mem]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
