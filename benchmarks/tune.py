"""Sweep the kernels' launch policy on a GPU and recommend one (kernels/launch.py
``LaunchConfig``); write tune.md and tune.json.

    python benchmarks/tune.py [--out DIR] [--budget SECONDS] [--losses anl_ce,ce,...]
    TRITON_INTERPRET=1 python benchmarks/tune.py --smoke     # CPU: the mechanics only

What is timed: ``launch.row_loss`` with the gradient (the one launch, or three for split
rows, behind the forward + backward of every loss), bf16 logits, CUDA events, L2
flushed before each repetition (benchmarks/common.py ``time_call``). Each case is a
(loss, rows, K); a candidate config is timed on a case only through the launch plan it
gives there (path, block, warps, chunk: ``launch.plan``), so candidates that launch the
same thing share one measurement.

Two sweeps:
1. rows-parallel: every combination of CANDIDATES on many rows at K from 1000 to 262144.
   The recommendation is the combination with the smallest geometric mean, over the
   cases, of time / (best time of that case): one config that is never far from the
   best anywhere, rather than the best on one shape.
2. few rows, long rows: split rows (each chunk size) against streaming, for 16 to 1024
   rows at K = 262144. Recommended split_max_rows: the largest row count at which
   splitting is faster (by 5 % or more); split_chunk: the chunk that wins there most.

Times are only worth anything from a GPU (the smoke mode checks that the script runs).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import re
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import common as C  # noqa: E402
from fused_anl import LOSSES, _hyper, _registry  # noqa: E402
from fused_anl.kernels import launch  # noqa: E402

CANDIDATES = dict(max_single_k=(4096, 8192, 16384), block_k=(4096, 8192, 16384),
                  elems_per_thread=(8, 16), programs_per_sm=(0, 1, 2, 4))
ROWS_KS = (1000, 8192, 16384, 32768, 131072, 262144)
SPLIT = dict(rows=(16, 64, 256, 1024), k=262144, chunks=(16384, 32768, 65536), base={})
SMOKE = dict(candidates=dict(max_single_k=(16, 32), block_k=(8, 16), elems_per_thread=(1,),
                             programs_per_sm=(0, 2)),
             ks=(24, 100), rows=8,
             split=dict(rows=(2, 8), k=200, chunks=(32, 64), base=dict(max_single_k=16, block_k=8)))


def rows_for(k: int) -> int:
    """Enough rows to fill the GPU many times over; about 1 GiB of bf16 logits at most."""
    return max(4096, min(16384, (1 << 29) // k))


class Timer:
    def __init__(self, device, budget_s, reps=dict(warmup=2, min_reps=5, max_reps=20, target_s=0.2)):
        self.device, self.reps = device, reps
        self.deadline = time.monotonic() + budget_s if budget_s else None
        self.cache = {}
        self.inputs = (None, None)

    def out_of_time(self):
        return self.deadline is not None and time.monotonic() > self.deadline

    def time(self, loss, rows, k, cfg):
        """Median seconds of row_loss with the gradient under cfg (cached per launch plan)."""
        key = (loss, rows, k, launch.plan(rows, k, cfg, sms=launch.sm_count(self.device)))
        if key not in self.cache:
            spec = LOSSES[loss]
            if self.inputs[0] != (rows, k):
                self.inputs = (None, None)  # free the previous case's logits first
                self.inputs = ((rows, k), C.make_inputs(rows, k, torch.bfloat16, self.device))
            z, t = self.inputs[1]
            z3 = z.view(rows, k, 1)
            values = _hyper.constants(_registry.resolve_hyper(spec, {}), spec.passive)
            h = torch.tensor(values, dtype=torch.float32, device=self.device)
            den = torch.full((1,), float(rows), device=self.device)

            def call():
                launch.row_loss(z3, t, None, h, den, active=spec.active, passive=spec.passive,
                                exact=False, ignore_index=-100, compute_grad=True)
            try:
                with launch.config(**asdict(cfg)):
                    sec, _ = C.time_call(call, self.device, **self.reps)
            except Exception as e:  # a plan that does not compile or run: never recommended
                print(f"{loss} rows={rows} K={k} {key[-1]}: {type(e).__name__}: {e}"[:400],
                      file=sys.stderr)
                sec = float("inf")
                if self.device == "cuda":
                    torch.cuda.synchronize()
            self.cache[key] = sec
        return self.cache[key]


def sweep_configs(candidates):
    """Every combination of the candidate values, on top of the current config."""
    names = list(candidates)
    return [replace(launch.get_config(), **dict(zip(names, vals)))
            for vals in itertools.product(*(candidates[n] for n in names))]


def sweep_rows(timer, losses, candidates, ks, rows=None):
    configs = sweep_configs(candidates)
    results = []  # (loss, rows, k, config index, seconds)
    for loss in losses:
        for k in ks:
            n = rows or rows_for(k)
            for i, cfg in enumerate(configs):
                if timer.out_of_time():
                    return configs, results, True
                results.append((loss, n, k, i, timer.time(loss, n, k, cfg)))
    return configs, results, False


def recommend(configs, results):
    """Index of the config with the smallest geometric mean of time / best per case, and
    the geometric means of every config (over the cases every config was timed on)."""
    by_case = {}
    for loss, n, k, i, sec in results:
        by_case.setdefault((loss, n, k), {})[i] = sec
    full = {c: v for c, v in by_case.items()
            if len(v) == len(configs) and math.isfinite(min(v.values()))}
    if not full:
        return None, {}
    score = {i: math.exp(sum(math.log(v[i] / min(v.values())) for v in full.values()) / len(full))
             for i in range(len(configs))}
    return min(score, key=score.get), score


def sweep_split(timer, loss, split):
    base = replace(launch.get_config(), **split["base"])
    rows_out = []
    for n in split["rows"]:
        if timer.out_of_time():
            break
        stream = timer.time(loss, n, split["k"], replace(base, split_max_rows=0))
        by_chunk = {c: timer.time(loss, n, split["k"], replace(base, split_max_rows=1 << 30,
                                                               split_chunk=c))
                    for c in split["chunks"]}
        rows_out.append(dict(loss=loss, rows=n, k=split["k"], stream_s=stream,
                             split_s={str(c): s for c, s in by_chunk.items()}))
    faster = [r for r in rows_out if min(r["split_s"].values()) < 0.95 * r["stream_s"]]
    rec = {}
    if rows_out:
        rec["split_max_rows"] = max((r["rows"] for r in faster), default=0)
        wins = [min(r["split_s"], key=r["split_s"].get) for r in faster]
        if wins:
            rec["split_chunk"] = int(max(set(wins), key=wins.count))
    return rows_out, rec


def report(device_name, sms, names, configs, results, rec_i, score, split_rows, split_rec,
           copy_bw, cut):
    default = launch.get_config()
    lines = [f"# Launch-policy sweep on {device_name} ({datetime.date.today()})", ""]
    lines.append(f"copy bandwidth (device-to-device, read + write): {copy_bw / 1e9:.0f} GB/s"
                 if copy_bw else "copy bandwidth: not measured")
    if cut:
        lines.append("**The time budget cut the sweep; the recommendation covers the cases "
                     "every candidate was timed on.**")
    lines += ["", "## Rows-parallel cases (bf16, row_loss with the gradient)", "",
              "| loss | rows | K | " + " | ".join(names) + " | plan | ms | GB/s | of copy |",
              "|---|---|---|" + "---|" * len(names) + "---|---|---|---|"]
    seen = set()
    for loss, n, k, i, sec in results:
        cfg = configs[i]
        pl = launch.plan(n, k, cfg, sms=sms)
        key = (loss, n, k, pl)
        if key in seen:
            continue
        seen.add(key)
        bw = 2 * n * k * 2 / sec
        lines.append(f"| {loss} | {n} | {k} | " + " | ".join(str(getattr(cfg, f)) for f in names)
                     + f" | {pl.path} {pl.block}/{pl.num_warps}w"
                     + (f" grid {pl.grid}" if pl.grid else "")
                     + f" | {sec * 1e3:.3f} | {bw / 1e9:.0f} | "
                     + (f"{bw / copy_bw:.2f}" if copy_bw else "-") + " |")
    if rec_i is not None:
        rec = configs[rec_i]
        cur = [i for i, c in enumerate(configs) if all(getattr(c, f) == getattr(default, f)
                                                        for f in names)]
        lines += ["", f"Recommended ({', '.join(f'{f}={getattr(rec, f)}' for f in names)}): "
                  f"geometric mean of time / best {score[rec_i]:.3f}"]
        if cur:
            lines.append(f"Current default: {score[cur[0]]:.3f}")
    if split_rows:
        lines += ["", f"## Few long rows (K = {split_rows[0]['k']})", "",
                  "| loss | rows | stream ms | "
                  + " | ".join(f"split {c} ms" for c in split_rows[0]["split_s"]) + " |",
                  "|---|---|---|" + "---|" * len(split_rows[0]["split_s"])]
        for r in split_rows:
            lines.append(f"| {r['loss']} | {r['rows']} | {r['stream_s'] * 1e3:.3f} | "
                         + " | ".join(f"{s * 1e3:.3f}" for s in r["split_s"].values()) + " |")
        lines.append(f"\nRecommended: {split_rec}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="results folder (default benchmarks/results/<device>-<date>)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds (0: no limit)")
    ap.add_argument("--losses", default="anl_ce,ce")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        raise SystemExit("tune.py times GPU kernels: run it on a CUDA machine (or --smoke)")
    losses = a.losses.split(",")
    timer = Timer(device, a.budget, **(dict(reps=dict(warmup=1, min_reps=1, max_reps=1))
                                       if a.smoke else {}))
    if a.smoke:
        cands, ks, rows, split = SMOKE["candidates"], SMOKE["ks"], SMOKE["rows"], SMOKE["split"]
    else:
        cands, ks, rows, split = CANDIDATES, ROWS_KS, None, SPLIT
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter, smoke)"
    copy_bw = None
    if device == "cuda":
        z, _ = C.make_inputs(16384, 32768, torch.bfloat16, device)
        copy_bw = C.copy_bandwidth(z, device)
        del z
    configs, results, cut = sweep_rows(timer, losses, cands, ks, rows)
    rec_i, score = recommend(configs, results)
    split_rows, split_rec = sweep_split(timer, losses[0], split)
    text = report(name, launch.sm_count(device), list(cands), configs, results, rec_i, score,
                  split_rows, split_rec, copy_bw,
                  cut or timer.out_of_time())
    print(text)
    slug = re.sub(r"[^a-z0-9]+", "-", name.split(" (")[0].lower()).strip("-")
    out = Path(a.out) if a.out else (Path(__file__).parent / "results" /
                                     f"{slug}-{datetime.date.today()}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.md").write_text(text)
    (out / "tune.json").write_text(json.dumps(dict(
        device=name, copy_bw=copy_bw, candidates=cands, configs=[asdict(c) for c in configs],
        results=results, recommended=asdict(configs[rec_i]) if rec_i is not None else None,
        score={str(i): s for i, s in score.items()}, split=split_rows,
        split_recommended=split_rec), indent=1))
    print(f"wrote {out}/tune.md, tune.json")


if __name__ == "__main__":
    main()
