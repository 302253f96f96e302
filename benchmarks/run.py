"""Run the benchmark matrix; write results.md, results.json and results.png under
benchmarks/results/<device-slug>-<date>/ and print the table and the target checks.

    python benchmarks/run.py                 # CUDA: the full matrix; CPU: a small one (< 5 min)
    python benchmarks/run.py --quick         # a few cases (smoke test of the harness)
    python benchmarks/run.py --losses anl_ce,ce --impls fused,eager --budget 0 --out /tmp/b

The matrix runs in priority order under a time budget (--budget seconds; the default
keeps the CUDA run within one 10-minute device command): first the cases the targets
are about, then the rest from the smallest to the largest, then the fused linear +
loss cases, then torch.compile on the remaining large cases. Whatever the budget cuts
is listed in results.md ("skipped (time budget)"), never silently dropped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # backend="auto" on CPU must be the torch path, not the Triton interpreter (which
    # Triton reads when the kernels are defined, i.e. at import)
    os.environ.pop("TRITON_INTERPRET", None)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common as C  # noqa: E402

LOSS_ORDER = ["anl_ce", "anl_fl", "nce_rce", "ce"]
MODE_ORDER = ["fwd+bwd", "fwd"]

CUDA_MATRIX = dict(losses=["anl_ce", "anl_fl", "nce_rce", "ce"], dtypes=["bfloat16", "float32"],
                   ns=[4096, 16384], ks=[1000, 32768, 131072, 262144], modes=["fwd+bwd", "fwd"])
CPU_MATRIX = dict(losses=["anl_ce", "ce"], dtypes=["float32"], ns=[4096], ks=[1000, 32768],
                  modes=["fwd+bwd", "fwd"])
QUICK = dict(cuda=dict(dtypes=["bfloat16"], ns=[4096], ks=[1000, 32768], modes=["fwd+bwd"]),
             cpu=dict(ns=[1024], ks=[1000, 8192], modes=["fwd+bwd"]))
# CPU peak memory (fresh subprocesses), fwd+bwd: the CPU target's case
CPU_MEMORY = dict(shape=(4096, 32768), dtype="float32", impls=["fused", "eager"])
CPU_MEMORY_QUICK = dict(shape=(1024, 8192), dtype="float32", impls=["fused", "eager"])

LINEAR = dict(cuda=dict(losses=["anl_ce", "ce"], n=16384, d=4096, ks=[32768, 128256, 262144], dtype="bfloat16"),
              cpu=dict(losses=["anl_ce"], n=1024, d=256, ks=[32768], dtype="float32"))
LINEAR_QUICK = dict(cuda=dict(losses=["anl_ce"], n=4096, d=1024, ks=[32768], dtype="bfloat16"),
                    cpu=dict(losses=["anl_ce"], n=512, d=64, ks=[8192], dtype="float32"))

# repetitions: warm-up calls, then target_s / (duration of a call) repetitions within bounds
TIMING = dict(cuda=dict(warmup=1, min_reps=5, max_reps=20, target_s=0.2),
              cpu=dict(warmup=1, min_reps=3, max_reps=10, target_s=2.0))
BUDGET_S = dict(cuda=480, cpu=200)  # full run; --quick runs unbounded

TARGET_N, TARGET_KS = 16384, (32768, 131072, 262144)


def device_slug(device):
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------------------
# the task list


def plan(m, device, *, compile_all=False, only=None):
    """[(tier, kind, case, impls)] in priority order. case = (loss, dtype, n, k, mode)."""
    cases = [(loss, dt, n, k, mode) for loss in m["losses"] for dt in m["dtypes"] for n in m["ns"]
             for k in m["ks"] for mode in m["modes"]]

    def is_target(c):
        loss, dt, n, k, mode = c
        if device == "cuda":
            return mode == "fwd+bwd" and dt == "bfloat16" and n == TARGET_N and k in TARGET_KS
        return loss == "anl_ce" and mode == "fwd+bwd" and dt == "float32" and (n, k) == CPU_MEMORY["shape"]

    def big(c):  # where torch.compile is worth its per-shape compile time by default
        return c[2] == max(m["ns"]) and c[3] >= 32768

    tasks = []
    for c in cases:
        impls, skipped = C.implementations(c[0], device)
        names = [i for i in C.IMPL_ORDER if (i in impls or i in skipped) and (not only or i in only)]
        now = [i for i in names if i != "compiled" or i in skipped]
        later = [i for i in names if i == "compiled" and i in impls]
        if is_target(c):
            tasks.append((0, "loss", c, names))
        else:
            tasks.append((1, "loss", c, now))
            if later and (big(c) or compile_all):
                tasks.append((3 if big(c) else 4, "loss", c, later))
    # tier 1 smallest first (mixing losses), so that a cut loses the largest cases
    tasks.sort(key=lambda t: (t[0], t[2][2] * t[2][3] if t[0] == 1 else 0))
    return tasks


# --------------------------------------------------------------------------------------
# running


def run_tasks(tasks, device, deadline, *, linear=None, memory_cpu=None):
    rows, lin_rows, skipped_budget, copies = [], [], [], {}
    timing = TIMING[device]
    t_start = time.monotonic()

    def over(margin=0.0):
        return deadline is not None and time.monotonic() + margin > deadline

    for tier, kind, case, names in tasks:
        loss, dt, n, k, mode = case
        impls, skipped = C.implementations(loss, device)
        todo = []
        for name in names:
            if name in skipped:
                rows.append(dict(loss=loss, impl=name, dtype=dt, n=n, k=k, mode=mode, skipped=skipped[name]))
            elif over(60 if name == "compiled" else 0):
                skipped_budget.append(f"{loss} {dt} N={n} K={k} {mode} {name}")
                rows.append(dict(loss=loss, impl=name, dtype=dt, n=n, k=k, mode=mode,
                                 skipped="time budget"))
            else:
                todo.append(name)
        if not todo:
            continue
        try:
            z, t = C.make_inputs(n, k, C.DTYPES[dt], device)
            nbytes = z.numel() * z.element_size()
            if nbytes not in copies:
                copies[nbytes] = C.copy_bandwidth(z, device)
            copy_bw = copies[nbytes]
        except Exception as e:  # noqa: BLE001 - inputs (or the copy buffer) do not fit
            err = "OOM (inputs)" if C._is_oom(e) else f"{type(e).__name__}: {e}"[:160]
            rows += [dict(loss=loss, impl=name, dtype=dt, n=n, k=k, mode=mode, error=err) for name in todo]
            C.free(device)
            continue
        for name in todo:  # liger last: it writes its gradient into the logits
            tm = dict(timing, warmup=2) if name == "compiled" else timing
            r = C.measure(loss, name, impls[name], z, t, mode, device, copy_bw, memory=True, timing=tm,
                          deadline=deadline)
            r["copy_gbps"] = copy_bw / 1e9
            if name == "fused":
                r["backend"] = C.fused_backend(device)
                if r["backend"] == "triton":  # which kernel path and launch shape ran
                    from fused_anl.kernels import launch
                    pl = launch.plan(n, k, sms=launch.sm_count(device))
                    r["plan"] = (f"{pl.path} block {pl.block}, {pl.num_warps} warps"
                                 + (f", grid {pl.grid}" if pl.grid else "")
                                 + (f", {pl.chunks} chunks" if pl.path == "split" else ""))
            rows.append(r)
            print(line(r), flush=True)
        del z, t
        C.free(device)
    if memory_cpu and device == "cpu":
        for loss in sorted({r["loss"] for r in rows}, key=LOSS_ORDER.index):
            for name in memory_cpu["impls"]:
                row = find(rows, loss=loss, impl=name, dtype=memory_cpu["dtype"], n=memory_cpu["shape"][0],
                           k=memory_cpu["shape"][1], mode="fwd+bwd")
                if row is None:
                    continue
                if over() and loss != "anl_ce":  # the target's case is measured whatever the budget
                    skipped_budget.append(f"{loss} {name} CPU memory")
                    continue
                try:
                    res = C.peak_extra_cpu(loss, name, memory_cpu["shape"], C.DTYPES[memory_cpu["dtype"]], "fwd+bwd")
                    row["peak_extra_mib"] = res["extra"] / 2**20
                    row["mem_method"] = res["method"]
                    print(f"memory   {loss:8s} {name:11s} N={memory_cpu['shape'][0]} K={memory_cpu['shape'][1]}"
                          f" fwd+bwd: {row['peak_extra_mib']:.0f} MiB ({res['method']}, fresh process)", flush=True)
                except Exception as e:  # noqa: BLE001
                    row["mem_error"] = str(e)[:160]
    if linear:
        lin_rows = run_linear(linear, device, deadline, skipped_budget)
    return rows, lin_rows, skipped_budget, copies, time.monotonic() - t_start


def run_linear(m, device, deadline, skipped_budget):
    rows = []
    timing = TIMING[device]
    for loss in m["losses"]:
        impls, skipped = C.linear_implementations(loss, device)
        for k in m["ks"]:
            for name in m.get("impls", ["fused_linear", "unfused", "unfused_eager", "liger_flce", "cce"]):
                base = dict(loss=loss, impl=name, dtype=m["dtype"], n=m["n"], d=m["d"], k=k, mode="fwd+bwd")
                if name in skipped:
                    rows.append(dict(base, skipped=skipped[name]))
                    continue
                if name not in impls:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    skipped_budget.append(f"linear {loss} K={k} {name}")
                    rows.append(dict(base, skipped="time budget"))
                    continue
                try:
                    h, w, t = C.make_linear_inputs(m["n"], m["d"], k, C.DTYPES[m["dtype"]], device)
                except Exception as e:  # noqa: BLE001
                    rows.append(dict(base, error="OOM (inputs)" if C._is_oom(e) else str(e)[:160]))
                    continue
                r = C.measure_linear(loss, name, impls[name], h, w, t, device, timing=timing, deadline=deadline)
                del h, w, t
                C.free(device)
                if device == "cpu" and "ms" in r and name != "liger_flce" and m.get("cpu_memory", True):
                    try:
                        res = C.peak_extra_cpu(loss, name, (m["n"], m["d"], k), C.DTYPES[m["dtype"]], "fwd+bwd",
                                               kind="linear")
                        r["peak_extra_mib"] = res["extra"] / 2**20
                        r["mem_method"] = res["method"]
                    except Exception as e:  # noqa: BLE001
                        r["mem_error"] = str(e)[:160]
                rows.append(r)
                print("linear   " + (f"{loss:8s} {name:13s} N={r['n']} D={r['d']} K={k}: " +
                                     (r.get("error") or f"{r['ms']:.2f} ms" +
                                      (f", {r['peak_extra_mib']:.0f} MiB" if "peak_extra_mib" in r else ""))),
                      flush=True)
    for r in rows:
        b = find(rows, loss=r["loss"], impl="unfused", k=r["k"])
        if b and "ms" in r:
            r["time_vs_unfused"] = r["ms"] / b["ms"]
            if "peak_extra_mib" in r and "peak_extra_mib" in b:
                r["memory_saving"] = b["peak_extra_mib"] / max(r["peak_extra_mib"], 1e-9)
    return rows


# --------------------------------------------------------------------------------------
# reporting


def line(r):
    head = f"{r['loss']:8s} {r['impl']:11s} {r['dtype']:8s} N={r['n']:<6d} K={r['k']:<7d} {r['mode']:8s}"
    if "ms" not in r:
        return f"{head} {r.get('error') or r.get('skipped')}"
    mem = f"{r['peak_extra_mib']:10.1f} MiB" if "peak_extra_mib" in r else ""
    return f"{head} {r['ms']:10.3f} ms {r['gbps']:8.1f} GB/s {100 * r['frac_copy']:5.1f}% {mem}"


def find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "ms" in r:
            return r
    return None


def speedups(rows):
    """On every row with a time: fused_speedup = its time / fused's time on the same case;
    on fused rows: x_<impl> for each other implementation."""
    for r in rows:
        if "ms" not in r:
            continue
        f = find(rows, loss=r["loss"], impl="fused", dtype=r["dtype"], n=r["n"], k=r["k"], mode=r["mode"])
        if f and r is not f:
            r["fused_speedup"] = r["ms"] / f["ms"]
            f[f"x_{r['impl']}"] = r["ms"] / f["ms"]


def sort_rows(rows):
    return sorted(rows, key=lambda r: (LOSS_ORDER.index(r["loss"]) if r["loss"] in LOSS_ORDER else 99, r["dtype"],
                                       r["n"], r["k"], MODE_ORDER.index(r["mode"]), C.IMPL_ORDER.index(r["impl"])))


def _fmt(v, f):
    return f.format(v) if v is not None else ""


def table(rows):
    out = ["| loss | dtype | N | K | mode | impl | ms | GB/s | % of copy | peak extra MiB | fused speedup | note |",
           "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    not_run = {}
    for r in sort_rows(rows):
        if r.get("skipped") and r["skipped"] != "time budget":  # the same reason on every case: once, below
            not_run.setdefault((r["impl"], r["skipped"]), []).append(r)
            continue
        note = r.get("error") or r.get("skipped") or ""
        if r["impl"] == "fused" and "backend" in r:
            note = f"backend {r['backend']}" + (f" ({r['plan']})" if "plan" in r else "")
        if "mem_error" in r:
            note += f" memory: {r['mem_error']}"
        out.append("| " + " | ".join([
            r["loss"], r["dtype"], str(r["n"]), str(r["k"]), r["mode"], r["impl"],
            _fmt(r.get("ms"), "{:.3f}"), _fmt(r.get("gbps"), "{:.1f}"), _fmt(r.get("frac_copy"), "{:.1%}"),
            _fmt(r.get("peak_extra_mib"), "{:.1f}"), _fmt(r.get("fused_speedup"), "{:.2f}x"), note]) + " |")
    if not_run:
        out.append("\nNot run:")
        for (impl, why), rs in not_run.items():
            n_cases = len({(r["loss"], r["dtype"], r["n"], r["k"], r["mode"]) for r in rs})
            out.append(f"- `{impl}` ({', '.join(sorted({r['loss'] for r in rs}))}; {n_cases} cases): {why}")
    return "\n".join(out)


def linear_table(rows):
    out = ["| loss | impl | dtype | N | D | K | ms | peak extra MiB | input grads MiB | time / unfused | "
           "memory saving | note |", "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append("| " + " | ".join([
            r["loss"], r["impl"], r["dtype"], str(r["n"]), str(r["d"]), str(r["k"]), _fmt(r.get("ms"), "{:.2f}"),
            _fmt(r.get("peak_extra_mib"), "{:.1f}"), _fmt(r.get("grads_mib"), "{:.1f}"),
            _fmt(r.get("time_vs_unfused"), "{:.2f}x"), _fmt(r.get("memory_saving"), "{:.1f}x"),
            r.get("error") or r.get("skipped") or r.get("mem_error") or ""]) + " |")
    return "\n".join(out)


def targets(rows, lin_rows, device, *, n=TARGET_N, ks=TARGET_KS, linear_k=128256, gpu=None):
    """The issue's targets: PASS/FAIL/n.a. with the measured numbers. ``n``, ``ks`` and
    ``linear_k``: the cases the GPU targets are checked on; ``gpu`` (default: device is
    cuda) checks the GPU targets whatever the device (the CPU rehearsal of gpu_check)."""
    lines = []
    gpu = device == "cuda" if gpu is None else gpu

    def check(name, ok, detail):
        lines.append(f"{'n.a.' if ok is None else ('PASS' if ok else 'FAIL'):4s}  {name}: {detail}")

    def why_missing(**kw):
        for r in rows:
            if all(r.get(k) == v for k, v in kw.items()):
                return r.get("error") or r.get("skipped") or "?"
        return "not run"

    if gpu:
        dt = "bfloat16"
        for k in ks:
            case = dict(n=n, k=k, dtype=dt, mode="fwd+bwd")
            f = find(rows, loss="anl_ce", impl="fused", **case)
            if not f:
                check(f"ANL-CE fwd+bwd bf16 N={n} K={k}", None, f"fused: {why_missing(loss='anl_ce', impl='fused', **case)}")
                continue
            check(f"ANL-CE fwd+bwd bf16 N={n} K={k} >= 80% of copy bandwidth", f["frac_copy"] >= 0.8,
                  f"{f['frac_copy']:.1%} ({f['gbps']:.0f} of {f['copy_gbps']:.0f} GB/s, {f['ms']:.3f} ms)")
            for other, need in (("compiled", 1.5), ("eager", 6.0)):
                o = find(rows, loss="anl_ce", impl=other, **case)
                check(f"ANL-CE K={k} >= {need}x faster than {other}", o["ms"] / f["ms"] >= need if o else None,
                      f"{o['ms'] / f['ms']:.2f}x ({f['ms']:.3f} vs {o['ms']:.3f} ms)" if o
                      else f"{other}: {why_missing(loss='anl_ce', impl=other, **case)}")
            grad = n * k * 2
            allowed = grad + 1024 * n + 2**20
            pe = f.get("peak_extra_mib")
            check(f"ANL-CE K={k} peak extra memory <= gradient + O(N) (gradient + 1 KiB/row + 1 MiB)",
                  pe * 2**20 <= allowed if pe is not None else None,
                  f"{pe:.1f} MiB, gradient {grad / 2**20:.1f} MiB, (extra - gradient)/N = "
                  f"{(pe * 2**20 - grad) / n:.0f} B/row" if pe is not None else "not measured")
            for other in ("anl_fl", "nce_rce"):
                o = find(rows, loss=other, impl="fused", **case)
                check(f"{other} within 15% of ANL-CE time (K={k})", o["ms"] <= 1.15 * f["ms"] if o else None,
                      f"{o['ms'] / f['ms']:.3f}x ({o['ms']:.3f} vs {f['ms']:.3f} ms)" if o
                      else why_missing(loss=other, impl="fused", **case))
        pairs = [(r, find(rows, loss="ce", impl="liger", dtype=r["dtype"], n=r["n"], k=r["k"], mode=r["mode"]))
                 for r in rows if r["loss"] == "ce" and r["impl"] == "fused" and "ms" in r and r["mode"] == "fwd+bwd"]
        pairs = [(f, lg) for f, lg in pairs if lg]
        if pairs:
            worst = max(pairs, key=lambda p: p[0]["ms"] / p[1]["ms"])
            check("fused CE at least as fast as Liger (every fwd+bwd case)",
                  all(f["ms"] <= lg["ms"] for f, lg in pairs),
                  f"{len(pairs)} cases; worst fused/liger time {worst[0]['ms'] / worst[1]['ms']:.3f} at "
                  f"{worst[0]['dtype']} N={worst[0]['n']} K={worst[0]['k']}")
        else:
            check("fused CE at least as fast as Liger", None,
                  why_missing(loss="ce", impl="liger"))
        f = find(lin_rows, loss="anl_ce", impl="fused_linear", k=linear_k)
        u = find(lin_rows, loss="anl_ce", impl="unfused", k=linear_k)
        if f and u and "peak_extra_mib" in f and "peak_extra_mib" in u:
            check(f"fused linear ANL-CE K={linear_k} <= 1.1x unfused time and >= 10x less peak extra memory",
                  f["ms"] <= 1.1 * u["ms"] and u["peak_extra_mib"] >= 10 * f["peak_extra_mib"],
                  f"time {f['ms'] / u['ms']:.2f}x, memory {u['peak_extra_mib'] / max(f['peak_extra_mib'], 1e-9):.1f}x "
                  f"less ({f['peak_extra_mib']:.0f} vs {u['peak_extra_mib']:.0f} MiB, both including the "
                  f"{f['grads_mib']:.0f} MiB of hidden/weight gradients)")
        else:
            check(f"fused linear ANL-CE K={linear_k} vs unfused", None, "not measured")
    else:
        n, k = CPU_MEMORY["shape"]
        case = dict(n=n, k=k, dtype="float32", mode="fwd+bwd")
        f = find(rows, loss="anl_ce", impl="fused", **case)
        e = find(rows, loss="anl_ce", impl="eager", **case)
        check(f"CPU path ANL-CE fwd+bwd N={n} K={k} fp32 >= 2x faster than eager",
              e["ms"] / f["ms"] >= 2 if f and e else None,
              f"{e['ms'] / f['ms']:.2f}x ({f['ms']:.0f} vs {e['ms']:.0f} ms)" if f and e else "not measured")
        fm, em = (f or {}).get("peak_extra_mib"), (e or {}).get("peak_extra_mib")
        check(f"CPU path ANL-CE fwd+bwd N={n} K={k} fp32 >= 3x less peak extra memory than eager",
              em >= 3 * fm if fm is not None and em is not None else None,
              f"{em / max(fm, 1e-9):.2f}x ({fm:.0f} vs {em:.0f} MiB, gradient {n * k * 4 / 2**20:.0f} MiB)"
              if fm is not None and em is not None else "not measured")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no results.png")
        return False
    ok = [r for r in rows if "ms" in r]
    groups = sorted({(r["loss"], r["dtype"], r["mode"]) for r in ok},
                    key=lambda g: (LOSS_ORDER.index(g[0]) if g[0] in LOSS_ORDER else 99, g[1], MODE_ORDER.index(g[2])))
    ns = sorted({r["n"] for r in ok})
    if not groups:
        return False
    fig, axes = plt.subplots(len(groups), 2 * len(ns), figsize=(4.2 * 2 * len(ns), 2.8 * len(groups)),
                             squeeze=False)
    for gi, g in enumerate(groups):
        for ni, n in enumerate(ns):
            at, af = axes[gi][2 * ni], axes[gi][2 * ni + 1]
            for impl in C.IMPL_ORDER:
                pts = sorted((r["k"], r["ms"], r["frac_copy"]) for r in ok
                             if (r["loss"], r["dtype"], r["mode"]) == g and r["n"] == n and r["impl"] == impl)
                if pts:
                    at.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
                    af.plot([p[0] for p in pts], [100 * p[2] for p in pts], marker="o", label=impl)
            title = f"{g[0]} {g[1]} {g[2]} N={n}"
            at.set(xscale="log", yscale="log", xlabel="K", ylabel="ms", title=title)
            af.set(xscale="log", xlabel="K", ylabel="% of copy bandwidth", title=title)
            at.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="a few small cases")
    ap.add_argument("--losses", default=None, help="comma list (default: the matrix's)")
    ap.add_argument("--impls", default=None, help=f"comma list among {','.join(C.IMPL_ORDER)}")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>-<date>)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run, 0 = unbounded (default: cuda %d, cpu %d; quick: 0)"
                         % (BUDGET_S["cuda"], BUDGET_S["cpu"]))
    ap.add_argument("--compile-all", action="store_true",
                    help="torch.compile on every case (default: only N=max, K>=32768)")
    ap.add_argument("--cpu-compile", action="store_true", help="include torch.compile on CPU")
    ap.add_argument("--no-linear", action="store_true", help="skip the fused linear + loss cases")
    args = ap.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    if args.cpu_compile:
        os.environ["BENCH_COMPILE_CPU"] = "1"

    m = dict(CUDA_MATRIX if device == "cuda" else CPU_MATRIX)
    if args.quick:
        m.update(QUICK[device])
    if args.losses:
        m["losses"] = args.losses.split(",")
    budget = args.budget if args.budget is not None else (0 if args.quick else BUDGET_S[device])
    deadline = time.monotonic() + budget if budget else None
    only = set(args.impls.split(",")) if args.impls else None
    linear = None if args.no_linear else (LINEAR_QUICK if args.quick else LINEAR)[device]
    memory_cpu = (CPU_MEMORY_QUICK if args.quick else CPU_MEMORY) if device == "cpu" else None

    dev_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {dev_name}; torch {torch.__version__}; fused backend 'auto' -> {C.fused_backend(device)}; "
          f"budget {budget or 'unbounded'} s", flush=True)
    tasks = plan(m, device, compile_all=args.compile_all, only=only)
    first = [t for t in tasks if t[0] <= 1]
    later = [t for t in tasks if t[0] > 1]
    rows, lin_rows, cut, copies, secs = run_tasks(first, device, deadline, linear=linear, memory_cpu=memory_cpu)
    if later:
        rows2, _, cut2, copies2, secs2 = run_tasks(later, device, deadline)
        rows, cut, secs = rows + rows2, cut + cut2, secs + secs2
        copies.update(copies2)
    speedups(rows)

    date = datetime.date.today().isoformat()
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"{device_slug(device)}-{date}")
    out.mkdir(parents=True, exist_ok=True)
    tgt = targets(rows, lin_rows, device)
    try:
        import triton
        triton_v = triton.__version__
    except Exception:  # noqa: BLE001
        triton_v = "not installed"
    copy_txt = ", ".join(f"{b / 2**20:.0f} MiB: {bw / 1e9:.1f} GB/s" for b, bw in sorted(copies.items()))
    head = (f"# Benchmarks on {dev_name}, {date}\n\n"
            f"torch {torch.__version__}, triton {triton_v}; `fused` = backend 'auto' -> {C.fused_backend(device)}. "
            f"Times are medians of {TIMING[device]['min_reps']}-{TIMING[device]['max_reps']} repetitions after "
            f"warm-up ({'CUDA events, L2 flushed before each' if device == 'cuda' else 'time.perf_counter'}). "
            f"Bytes = logits read once (+ gradient written once for fwd+bwd); '% of copy' compares with a "
            f"`dst.copy_(src)` of the logits' size measured in the same run ({copy_txt}). "
            f"'fused speedup' = this row's time / fused's time on the same case. Peak extra memory: "
            + ("`max_memory_allocated` during one call minus `memory_allocated` before it."
               if device == "cuda" else
               f"growth of the peak RSS of a fresh process over one fwd+bwd call (/proc/self/clear_refs + "
               f"VmHWM), measured at N={memory_cpu['shape'][0]} K={memory_cpu['shape'][1]} only.")
            + f" Run time {secs:.0f} s (budget {budget or 'unbounded'} s).\n")
    if cut:
        head += f"\nSkipped (time budget): {len(cut)} measurements: " + "; ".join(cut[:40]) + \
            (" ..." if len(cut) > 40 else "") + "\n"
    md = f"{head}\n{table(rows)}\n\n## Targets\n\n```\n{tgt}\n```\n"
    if lin_rows:
        md += ("\n## Fused linear + loss (forward+backward w.r.t. hidden and weight)\n\n"
               "`unfused` = logits by a matmul, then the fused loss; `unfused_eager` = matmul, then the eager "
               "reference. Peak extra memory includes the hidden and weight gradients the call leaves behind"
               + (" (CPU: fresh process, as above)" if device == "cpu" else "") + ".\n\n" + linear_table(lin_rows) + "\n")
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(dict(
        device=dev_name, date=date, torch=torch.__version__, triton=triton_v, fused_backend=C.fused_backend(device),
        matrix=m, timing=TIMING[device], budget_s=budget, run_s=secs,
        copy_gbps={str(b): bw / 1e9 for b, bw in copies.items()}, skipped_time_budget=cut,
        rows=sort_rows(rows), linear=lin_rows, targets=tgt.splitlines()), indent=1))
    if plot(rows, out / "results.png"):
        print(f"plot: {out / 'results.png'}")
    print("\n" + md)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
