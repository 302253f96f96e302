"""Run the benchmark matrix; write results.md, results.json and results.png under
benchmarks/results/<device>-<date>/ and print the table and the target checks.

    python benchmarks/run.py            # CUDA: the full matrix; CPU: a small one (< 5 min)
    python benchmarks/run.py --quick    # a few cases
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (copy_bandwidth, implementations, linear_implementations,  # noqa: E402
                               measure, measure_linear)

CUDA_MATRIX = dict(losses=["anl_ce", "anl_fl", "nce_rce", "ce"], dtypes=[torch.bfloat16, torch.float32],
                   ns=[4096, 16384], ks=[1000, 32768, 131072, 262144], modes=["fwd+bwd", "fwd"])
CPU_MATRIX = dict(losses=["anl_ce", "ce"], dtypes=[torch.float32], ns=[4096], ks=[1000, 32768],
                  modes=["fwd+bwd", "fwd"])


LINEAR_CUDA = dict(losses=["anl_ce", "ce"], n=16384, d=4096, ks=[32768, 128256, 262144], dtype=torch.bfloat16)
LINEAR_CPU = dict(losses=["anl_ce"], n=2048, d=256, ks=[32768], dtype=torch.float32)


def run_linear(device, quick=False):
    """Fused linear + loss against the unfused path (and Liger FLCE / CCE for CE)."""
    m = LINEAR_CUDA if device == "cuda" else LINEAR_CPU
    rows = []
    for loss in m["losses"][:1] if quick else m["losses"]:
        for k in m["ks"][:1] if quick else m["ks"]:
            for name, fn in linear_implementations(loss, device).items():
                r = measure_linear(loss, name, fn, m["n"], m["d"], k, m["dtype"], device,
                                   reps=3 if device == "cpu" else 5)
                rows.append(r)
                print(f"linear {loss:7s} {name:17s} K={k:<7d} " + (r.get("error") or
                      f"{r['ms']:9.2f} ms" + (f" {r['peak_extra_mib']:9.1f} MiB" if "peak_extra_mib" in r else "")),
                      flush=True)
    for r in rows:
        base = next((o for o in rows if o["impl"] == "unfused" and o["k"] == r["k"] and o["loss"] == r["loss"]
                     and "ms" in o), None)
        if base and "ms" in r:
            r["time_vs_unfused"] = r["ms"] / base["ms"]
            if "peak_extra_mib" in r and "peak_extra_mib" in base:
                r["memory_saving"] = base["peak_extra_mib"] / max(r["peak_extra_mib"], 1e-9)
    return rows


def linear_table(rows):
    cols = ["loss", "impl", "dtype", "n", "d", "k", "ms", "peak_extra_mib", "time_vs_unfused",
            "memory_saving", "error"]
    fmt = dict(ms="{:.2f}", peak_extra_mib="{:.1f}", time_vs_unfused="{:.2f}x", memory_saving="{:.1f}x")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) if c in r else "" for c in cols) + " |")
    return "\n".join(out)


def device_slug(device):
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_matrix(m, device, only=None, reps=5):
    probe = 2 * max(m["ns"]) * max(m["ks"]) if device == "cuda" else 1 << 28
    copy_bw = copy_bandwidth(min(probe, 1 << 31), device)
    print(f"device-to-device copy bandwidth: {copy_bw / 1e9:.1f} GB/s", flush=True)
    rows = []
    for loss in m["losses"]:
        impls = implementations(loss, device)
        for dtype in m["dtypes"]:
            for n in m["ns"]:
                for k in m["ks"]:
                    for mode in m["modes"]:
                        for name, fn in impls.items():
                            if only and name not in only:
                                continue
                            if name == "compiled" and not (n == max(m["ns"]) and mode == "fwd+bwd"):
                                continue  # compile once per shape: keep it to the target cases
                            r = measure(loss, name, fn, n, k, dtype, mode, device, copy_bw, reps=reps,
                                        memory=(mode == "fwd+bwd"))
                            rows.append(r)
                            print(_line(r), flush=True)
    return copy_bw, rows


def _line(r):
    if "error" in r:
        return f"{r['loss']:8s} {r['impl']:11s} {r['dtype']:8s} N={r['n']:<6d} K={r['k']:<7d} {r['mode']:8s} {r['error']}"
    mem = f"{r['peak_extra_mib']:10.1f} MiB" if "peak_extra_mib" in r else ""
    return (f"{r['loss']:8s} {r['impl']:11s} {r['dtype']:8s} N={r['n']:<6d} K={r['k']:<7d} {r['mode']:8s}"
            f" {r['ms']:9.3f} ms {r['gbps']:8.1f} GB/s {100 * r['frac_copy']:5.1f}% {mem}")


def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "ms" in r:
            return r
    return None


def speedups(rows):
    for r in rows:
        if r["impl"] != "fused" or "ms" not in r:
            continue
        for other in ("eager", "compiled", "torch_ce", "liger"):
            o = _find(rows, loss=r["loss"], impl=other, n=r["n"], k=r["k"], dtype=r["dtype"],
                      mode=r["mode"])
            if o:
                r[f"x_{other}"] = o["ms"] / r["ms"]


def table(rows):
    cols = ["loss", "impl", "dtype", "n", "k", "mode", "ms", "gbps", "frac_copy", "peak_extra_mib",
            "x_eager", "x_compiled", "x_torch_ce", "x_liger", "error"]
    fmt = dict(ms="{:.3f}", gbps="{:.1f}", frac_copy="{:.1%}", peak_extra_mib="{:.1f}",
               x_eager="{:.2f}x", x_compiled="{:.2f}x", x_torch_ce="{:.2f}x", x_liger="{:.2f}x")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) if c in r else "" for c in cols) + " |")
    return "\n".join(out)


def targets(rows, device):
    """The issue's targets, PASS/FAIL/n.a. with the measured numbers."""
    lines = []

    def check(name, ok, detail):
        lines.append(f"{'n.a.' if ok is None else ('PASS' if ok else 'FAIL'):4s}  {name}: {detail}")

    if device == "cuda":
        for k in (32768, 131072, 262144):
            f = _find(rows, loss="anl_ce", impl="fused", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
            c = _find(rows, loss="anl_ce", impl="compiled", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
            e = _find(rows, loss="anl_ce", impl="eager", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
            if f:
                check(f"ANL-CE bf16 N=16384 K={k} >= 80% of copy bandwidth", f["frac_copy"] >= 0.8,
                      f"{f['frac_copy']:.1%}")
                grad_mib = 16384 * k * 2 / 2**20
                check(f"ANL-CE K={k} peak extra memory <= gradient + O(N)",
                      f.get("peak_extra_mib", 1e30) <= grad_mib * 1.01 + 1,
                      f"{f.get('peak_extra_mib', float('nan')):.0f} MiB vs gradient {grad_mib:.0f} MiB")
            check(f"ANL-CE K={k} >= 1.5x faster than torch.compile", f and c and c["ms"] / f["ms"] >= 1.5
                  if f and c else None, f"{c['ms'] / f['ms']:.2f}x" if f and c else "missing")
            check(f"ANL-CE K={k} >= 6x faster than eager", e["ms"] / f["ms"] >= 6 if f and e else None,
                  f"{e['ms'] / f['ms']:.2f}x" if f and e else "missing (eager OOM?)")
            a = _find(rows, loss="anl_ce", impl="fused", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
            for other in ("anl_fl", "nce_rce"):
                o = _find(rows, loss=other, impl="fused", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
                check(f"{other} within 15% of ANL-CE (K={k})", o["ms"] <= 1.15 * a["ms"] if a and o else None,
                      f"{o['ms'] / a['ms']:.2f}x" if a and o else "missing")
            fc = _find(rows, loss="ce", impl="fused", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
            lg = _find(rows, loss="ce", impl="liger", n=16384, k=k, dtype="bfloat16", mode="fwd+bwd")
            check(f"fused CE at least as fast as Liger (K={k})", fc["ms"] <= lg["ms"] if fc and lg else None,
                  f"{lg['ms'] / fc['ms']:.2f}x" if fc and lg else "Liger not installed")
    else:
        f = _find(rows, loss="anl_ce", impl="fused", n=4096, k=32768, dtype="float32", mode="fwd+bwd")
        e = _find(rows, loss="anl_ce", impl="eager", n=4096, k=32768, dtype="float32", mode="fwd+bwd")
        if f and e:
            check("CPU path N=4096 K=32768 fp32 >= 2x faster than eager", e["ms"] / f["ms"] >= 2,
                  f"{e['ms'] / f['ms']:.2f}x ({f['ms']:.0f} vs {e['ms']:.0f} ms)")
            if "peak_extra_mib" in f and "peak_extra_mib" in e:
                check("CPU path >= 3x less peak extra memory",
                      e["peak_extra_mib"] >= 3 * f["peak_extra_mib"],
                      f"{e['peak_extra_mib'] / max(f['peak_extra_mib'], 1e-9):.2f}x "
                      f"({f['peak_extra_mib']:.0f} vs {e['peak_extra_mib']:.0f} MiB)")
    return "\n".join(lines)


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    groups = sorted({(r["loss"], r["dtype"], r["mode"], r["n"]) for r in rows if "ms" in r})
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3 * len(groups)), squeeze=False)
    for ax, g in zip(axes, groups):
        impls = sorted({r["impl"] for r in rows if (r["loss"], r["dtype"], r["mode"], r["n"]) == g})
        for impl in impls:
            pts = sorted((r["k"], r["ms"], r["frac_copy"]) for r in rows if "ms" in r and r["impl"] == impl
                         and (r["loss"], r["dtype"], r["mode"], r["n"]) == g)
            ax[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
            ax[1].plot([p[0] for p in pts], [100 * p[2] for p in pts], marker="o", label=impl)
        ax[0].set(xscale="log", yscale="log", xlabel="K", ylabel="ms", title=" ".join(map(str, g)))
        ax[1].set(xscale="log", xlabel="K", ylabel="% of copy bandwidth", title=" ".join(map(str, g)))
        ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--losses", default=None, help="comma list (default: the matrix's)")
    ap.add_argument("--impls", default=None, help="comma list of implementations to run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-linear", action="store_true", help="skip the fused linear + loss cases")
    args = ap.parse_args(argv)
    m = dict(CUDA_MATRIX if args.device == "cuda" else CPU_MATRIX)
    if args.quick:
        m.update(ns=[m["ns"][0]], ks=m["ks"][:2], modes=["fwd+bwd"])
    if args.losses:
        m["losses"] = args.losses.split(",")
    copy_bw, rows = run_matrix(m, args.device, only=args.impls.split(",") if args.impls else None,
                               reps=3 if args.device == "cpu" else 5)
    speedups(rows)
    lin = [] if args.no_linear else run_linear(args.device, args.quick)
    date = datetime.date.today().isoformat()
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"{device_slug(args.device)}-{date}")
    out.mkdir(parents=True, exist_ok=True)
    tgt = targets(rows, args.device)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    head = (f"# Benchmarks on {dev}, {date}\n\ntorch {torch.__version__}; device-to-device copy "
            f"bandwidth {copy_bw / 1e9:.1f} GB/s; times are medians.\n")
    md = f"{head}\n{table(rows)}\n\n## Targets\n\n```\n{tgt}\n```\n"
    if lin:
        md += ("\n## Fused linear + loss (forward+backward; target on a GPU at K=128256: "
               "<= 1.1x the unfused time with >= 10x less peak memory)\n\n" + linear_table(lin) + "\n")
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(dict(device=dev, date=date, torch=torch.__version__,
                                                      copy_gbps=copy_bw / 1e9, rows=rows, linear=lin),
                                                 indent=1))
    plot(rows, out / "results.png")
    print("\n" + md)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
