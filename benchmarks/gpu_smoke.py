"""GPU smoke matrix: every registered loss through every kernel path the launch policy
can choose, against the float64 reference, on fresh random inputs with the edge cases.

    python -m benchmarks.gpu_smoke [--full] [--rehearse] [--workers N] [--budget S] [--out F]

Paths (``PATH_KINDS``): ``single`` (whole row in registers), ``stream`` (row in blocks),
``split`` (rows split over programs, three launches), ``persistent`` (streaming on a
persistent grid), ``shard`` (class-parallel launches ``shard_stats1/2/finish`` through a
1-rank process group: nccl on CUDA, gloo on CPU, ``file://`` rendezvous), ``linear``
(``fused_anl.linear_loss``), ``inplace`` (``inplace_backward=True``) and ``compile``
(one ``torch.compile(fullgraph=True)`` call). ``launch.config`` forces each path, as
``tests/conftest.py`` PATHS does, but with the production block sizes.

Inputs (:func:`make_batch`): logits ``3 * N(0, 1)`` generated afresh per case, with
row 0 confident (label 30 above the rest), row 1 at scale 30 (most probabilities below
``p_min``), row 2 a padded vocabulary (last third ``-inf``), row 3 ``ignore_index`` and
row 4 a NaN logit. Outputs are poisoned before each call where they are allocated by
the library: the CUDA caching allocator is handed blocks filled with NaN first, so a
kernel that leaves an element unwritten shows up. The check is NaN-for-NaN (a NaN row
must be NaN in the value and in its gradient row, as the reference is; a mismatch is a
failed check) and, elsewhere, the error model of ``tests/helpers.py`` (the same bounds
as the unit tests, derived there). The fused linear loss runs in one chunk so that its
logits are bit-for-bit the ``addmm`` the reference is given; its hidden/weight
gradients are bounded by propagating the logit-gradient bound through the matmuls plus
one rounding of the output (2^-8 bf16, 2^-24 fp32) and float32 accumulation.

Cases run on a process pool (``--workers``; each worker has its own CUDA context),
which also compiles the Triton kernels on all the CPU cores at once. The queue is in
order of value (the headline losses first); past ``--budget`` no new case starts and
the cases not run are listed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

PATH_KINDS = ("single", "stream", "split", "persistent", "shard", "linear", "inplace", "compile")
HEADLINE = ("anl_ce", "ce", "anl_fl", "nce_rce")

# Launch policy per path (None: the default policy decides). GPU: production blocks.
GPU_CONFIG = {
    "single": None, "linear": None, "inplace": None, "shard": None, "compile": None,
    "stream": dict(split_max_rows=0),
    "split": dict(split_max_rows=1 << 30),
    "persistent": dict(split_max_rows=0, programs_per_sm=3, sms=1),
}
# K at or below the single-block limit: smaller blocks, so that the row still spans
# several of them (and several split chunks).
GPU_SMALL_K = dict(max_single_k=1024, block_k=1024, split_chunk=2048)
# Rehearsal (interpreter): tiny blocks, as tests/conftest.py PATHS.
CPU_CONFIG = {
    "single": None, "linear": None, "inplace": None, "shard": dict(block_k=8), "compile": None,
    "stream": dict(max_single_k=16, block_k=8),
    "split": dict(max_single_k=16, block_k=8, split_chunk=16, split_max_rows=1 << 30),
    "persistent": dict(max_single_k=16, block_k=8, programs_per_sm=3, sms=1),
}
GPU_SHAPES = dict(n=64, ks=(4096, 50257, 131072), single_k=4096, linear_d=256)
CPU_SHAPES = dict(n=6, ks=(24, 40), single_k=12, linear_d=8)


def cases(full: bool, rehearse: bool):
    """[(loss, path, dtype name, K)] in order of value. Default (GPU): every loss on every
    path at bf16 and fp32, the headline losses at every K of the path, the others at
    one K per path (rotating over the losses so that every K is covered); ``full``: every
    loss at every K. ``rehearse``: one loss per path (rotating), tiny K."""
    import fused_anl
    names = list(HEADLINE) + sorted(n for n in fused_anl.LOSSES if n not in HEADLINE)
    shapes = CPU_SHAPES if rehearse else GPU_SHAPES
    out = []
    if rehearse:
        for i, path in enumerate(PATH_KINDS):
            k = shapes["single_k"] if path in ("single", "compile") else shapes["ks"][i % 2]
            out.append((names[(5 * i) % len(names)], path, ("bfloat16", "float32")[i % 2], k))
        return out
    for li, name in enumerate(names):
        for pi, path in enumerate(PATH_KINDS):
            if path == "compile":
                continue
            if path == "single":
                ks = (shapes["single_k"],)
            elif path == "linear":
                ks = (shapes["ks"][0], shapes["ks"][1])[: 2 if (full or name in HEADLINE) else 1]
            else:
                ks = shapes["ks"] if (full or name in HEADLINE) else (shapes["ks"][(li + pi) % 3],)
            for k in ks:
                for dt in ("bfloat16", "float32"):
                    out.append((name, path, dt, k))
    out.insert(0, ("anl_ce", "compile", "bfloat16", shapes["single_k"]))
    return out


# ------------------------------------------------------------------------------ inputs


def make_batch(n, k, dtype, device, seed, *, ignore_index=-100, nan_row=True):
    """Random logits (3 N(0,1)) with the edge rows of the module doc; fresh per seed."""
    import torch
    g = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(n, k, generator=g, device=device) * 3
    t = torch.randint(0, k, (n,), generator=g, device=device)
    z[0] = torch.randn(k, generator=g, device=device)
    z[0, t[0]] = z[0].max() + 30.0
    z[1] = torch.randn(k, generator=g, device=device) * 30.0
    cut = max(2, k - k // 3)
    z[2, cut:] = float("-inf")
    t[2] = t[2] % cut
    t[3] = ignore_index
    if nan_row and n > 4:
        z[4, (7 * k) // 11] = float("nan")
    return z.to(dtype), t


def poison(device, nbytes):
    """Hand the CUDA caching allocator NaN-filled blocks of about ``nbytes`` (a few sizes),
    so outputs allocated next start as NaN. No-op on CPU."""
    import torch
    if device != "cuda":
        return
    bufs = [torch.full((max(1, s) // 4 + 1,), float("nan"), device=device)
            for s in (nbytes, nbytes // 2, nbytes // 8, 1 << 16, 1 << 12)]
    del bufs


# ------------------------------------------------------------------------------ checks


def _bounds(name, z, t, ref_g, dtype):
    """The gradient bound of tests/helpers.py (float32 reference's error included)."""
    import fused_anl
    import helpers
    tol = helpers.compute_tol(dtype)
    floor32 = 0.0
    if z.dtype.is_floating_point and dtype != __import__("torch").float64:
        _, g32 = helpers.loss_and_grad(getattr(fused_anl.reference, name), z.float(), t,
                                       reduction="none")
        d = (g32.double() - ref_g).abs()
        floor32 = 2 * d[d == d].max() if (d == d).any() else 0.0
    fin = ref_g.abs()[ref_g == ref_g]
    gmax = fin.max() if fin.numel() else 0.0
    return tol, (tol * gmax + (tol + helpers.GRAD_ROUNDING[dtype]) * ref_g.abs()
                 + helpers.GRAD_FLOOR[dtype] + floor32)


def compare(name, z, t, value, grad, *, ref=None):
    """NaN-aware comparison with the float64 reference: a list of failure strings."""
    import torch
    import helpers
    if ref is None:
        ref = helpers.reference_f64(name, z, t, reduction="none")
    ref_v, ref_g = ref
    fails = []
    v, g = value.double(), grad.double()
    nan_rows = torch.isnan(ref_v)
    if not torch.equal(torch.isnan(v), nan_rows):
        fails.append(f"NaN rows differ: fused {torch.isnan(v).nonzero().flatten().tolist()[:8]} vs "
                     f"reference {nan_rows.nonzero().flatten().tolist()[:8]}")
    gn = torch.isnan(g.reshape(g.shape[0], -1))
    rgn = torch.isnan(ref_g.reshape(ref_g.shape[0], -1))
    if not torch.equal(gn, rgn):
        bad = (gn != rgn).any(1).nonzero().flatten().tolist()
        fails.append(f"NaN gradient elements differ in rows {bad[:8]}")
    keep = ~nan_rows & ~torch.isnan(v)
    tol, bound_g = _bounds(name, z, t, ref_g, z.dtype)
    err_v = (v - ref_v).abs()[keep]
    bound_v = tol * ref_v.abs()[keep].clamp_min(1.0)
    if (err_v > bound_v).any():
        i = (err_v - bound_v).argmax()
        fails.append(f"value error {err_v[i]:.3g} > bound {bound_v[i]:.3g}")
    rows_ok = keep.reshape(-1, *[1] * (g.dim() - 1)).expand_as(g) & ~torch.isnan(g) & ~torch.isnan(ref_g)
    err_g = (g - ref_g).abs()
    over = (err_g > bound_g) & rows_ok
    if over.any():
        i = ((err_g - bound_g) * rows_ok).flatten().argmax()
        fails.append(f"grad error {err_g.flatten()[i]:.3g} > bound {bound_g.flatten()[i]:.3g} "
                     f"(ref {ref_g.flatten()[i]:.3g}) at flat index {i.item()}")
    return fails


# ------------------------------------------------------------------------------ one case

_PG = {}


def _group(device):
    """A 1-rank process group (nccl on CUDA, gloo on CPU), file:// rendezvous."""
    import torch.distributed as dist
    if "pg" not in _PG:
        fd, path = tempfile.mkstemp(prefix="gpu_smoke_pg_")
        os.close(fd)
        os.unlink(path)
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{path}",
                                rank=0, world_size=1)
        _PG["pg"] = dist.group.WORLD
    return _PG["pg"]


def run_case(case, device, seed, rehearse=False):
    """Run one case; returns a dict with ``ok`` and ``fails`` (never raises)."""
    name, path, dt, k = case
    t0 = time.monotonic()
    res = dict(loss=name, path=path, dtype=dt, k=k)
    try:
        res["fails"] = _run(name, path, dt, k, device, seed, rehearse)
    except Exception as e:  # noqa: BLE001 - a crash is a failed check, never the end of the run
        tb = traceback.format_exc().strip().splitlines()
        res["fails"] = [f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                        f" [{tb[-3].strip()[:200] if len(tb) > 2 else ''}]"]
    res["ok"] = not res["fails"]
    res["s"] = round(time.monotonic() - t0, 3)
    return res


def _run(name, path, dt, k, device, seed, rehearse):
    import torch
    import fused_anl
    import helpers
    from fused_anl.kernels import launch
    dtype = getattr(torch, dt)
    shapes = CPU_SHAPES if rehearse else GPU_SHAPES
    n = shapes["n"]
    cfg = dict((CPU_CONFIG if rehearse else GPU_CONFIG)[path] or {})
    if cfg and not rehearse and k <= 8192:
        cfg.update(GPU_SMALL_K)
    fn = getattr(fused_anl, name)
    backend = "triton"
    if path == "linear":
        return _run_linear(name, n, shapes["linear_d"], k, dtype, device, seed)
    z, t = make_batch(n, k, dtype, device, seed)
    with launch.config(**cfg):
        if path == "compile":
            return _run_compile(name, z, t, device)
        poison(device, 2 * z.numel() * z.element_size())
        if path == "inplace":
            base = z.detach().clone().requires_grad_(True)
            zz = base * 1  # a non-leaf the gradient may overwrite
            out = fn(zz, t, reduction="none", backend=backend, inplace_backward=True)
            out.sum().backward()
            value, grad = out.detach(), base.grad
        elif path == "shard":
            zz = z.detach().clone().requires_grad_(True)
            out = fn(zz, t, reduction="none", backend=backend, process_group=_group(device))
            out.sum().backward()
            value, grad = out.detach(), zz.grad
        else:
            rows = z.shape[0]
            pl = launch.plan(rows, k, sms=launch.sm_count(device))
            want = "stream" if path == "persistent" else path
            if pl.path != want or (path == "persistent") != (pl.grid > 0):
                return [f"launch policy chose {pl} for path {path}"]
            value, grad = helpers.loss_and_grad(fn, z, t, reduction="none", backend=backend)
    if device == "cuda":
        torch.cuda.synchronize()
    return compare(name, z, t, value, grad)


def _run_compile(name, z, t, device):
    """One torch.compile(fullgraph=True) call (inductor on CUDA; aot_eager on CPU, where
    inductor would need a C++ toolchain and minutes) against eager."""
    import torch
    import fused_anl
    fn = getattr(fused_anl, name)
    torch._dynamo.reset()
    cfn = torch.compile(lambda a, b: fn(a, b, reduction="none", backend="triton"), fullgraph=True,
                        backend="inductor" if device == "cuda" else "aot_eager")
    zz = z.detach().clone().requires_grad_(True)
    out = cfn(zz, t)
    out.sum().backward()
    return compare(name, z, t, out.detach(), zz.grad)


def _run_linear(name, n, d, k, dtype, device, seed):
    """linear_loss in one chunk vs the float64 reference of the same addmm's logits."""
    import torch
    import fused_anl
    import helpers
    g = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(n, d, generator=g, device=device).to(dtype)
    w = (torch.randn(k, d, generator=g, device=device) * (3 / math.sqrt(d))).to(dtype)
    b = torch.zeros(k, device=device, dtype=dtype)
    b[k - k // 3:] = float("-inf")  # padded vocabulary on every row
    t = torch.randint(0, k - k // 3, (n,), generator=g, device=device)
    t[3] = -100
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    poison(device, 4 * n * k * h.element_size())
    out = fused_anl.linear_loss(name, hh, ww, t, b, reduction="none", chunk_size=n, backend="triton")
    out.sum().backward()
    z = torch.addmm(b, h, w.t())  # the logits of the single chunk, bit for bit
    ref_v, ref_g = helpers.reference_f64(name, z, t, reduction="none")
    fails = []
    _, bound_g = _bounds(name, z, t, ref_g, dtype)
    eps = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(dtype, 2.0**-24)
    hd, wd = h.double(), w.double()
    gh_ref, gw_ref = ref_g @ wd, ref_g.t() @ hd
    bh = bound_g @ wd.abs() + eps * gh_ref.abs() + d * 2.0**-24 * (ref_g.abs() @ wd.abs())
    bw = bound_g.t() @ hd.abs() + eps * gw_ref.abs() + n * 2.0**-24 * (ref_g.abs().t() @ hd.abs())
    tol = helpers.compute_tol(dtype)
    err_v = (out.detach().double() - ref_v).abs()
    if not (err_v <= tol * ref_v.abs().clamp_min(1.0)).all():
        fails.append(f"value error {err_v.max():.3g}")
    for what, got, ref, bound in (("hidden", hh.grad, gh_ref, bh), ("weight", ww.grad, gw_ref, bw)):
        if got is None or got.dtype != dtype:
            fails.append(f"{what} gradient missing or of dtype {None if got is None else got.dtype}")
            continue
        err = (got.double() - ref).abs()
        if not (err <= bound).all():
            i = (err - bound).flatten().argmax()
            fails.append(f"{what} grad error {err.flatten()[i]:.3g} > bound {bound.flatten()[i]:.3g}")
    return fails


# ------------------------------------------------------------------------------ the pool


def _worker_init(device):
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import torch  # noqa: F401
    import fused_anl  # noqa: F401  (compile-free import; kernels compile on first call)


def _worker_job(args):
    job, device, seed, rehearse = args
    return run_case(job, device, seed, rehearse)


def run_matrix(case_list, device, *, workers, deadline=None, rehearse=False, log=None, full=False):
    """Run the cases on a spawn pool; stop handing out cases past ``deadline``
    (time.monotonic()). ``case_list`` None: :func:`cases` (computed in a worker, so that
    this process need not import torch). Returns (results, not_run, case_list)."""
    import multiprocessing as mp
    results, not_run = [], []
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, initargs=(device,)) as pool:
        if case_list is None:
            case_list = pool.apply(cases, (full, rehearse))
        pending = {}
        it = iter(enumerate(case_list))
        done = False

        def feed():
            nonlocal done
            while not done and len(pending) < 2 * workers:
                try:
                    i, c = next(it)
                except StopIteration:
                    done = True
                    return
                if deadline is not None and time.monotonic() > deadline:
                    not_run.append(c)
                    continue
                pending[i] = pool.apply_async(_worker_job, ((c, device, 1000 + i, rehearse),))
        feed()
        while pending:
            ready = [i for i, r in pending.items() if r.ready()]
            if not ready:
                if deadline is not None and time.monotonic() > deadline + 5:
                    for i in pending:
                        not_run.append(case_list[i] + ("(in flight at the deadline)",))
                    pool.terminate()
                    break
                time.sleep(0.05)
                continue
            for i in ready:
                r = pending.pop(i).get()
                results.append(r)
                if log:
                    log(r)
            feed()
        not_run += [c for _, c in it]
    return results, not_run, case_list


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every loss at every K of every path")
    ap.add_argument("--rehearse", action="store_true", help="CPU, interpreter, tiny shapes")
    ap.add_argument("--workers", type=int, default=0, help="pool size (default: cores - 4, >= 1)")
    ap.add_argument("--budget", type=float, default=0, help="seconds (0: unbounded)")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    import torch
    device = "cuda" if torch.cuda.is_available() and not a.rehearse else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("no CUDA device: run with TRITON_INTERPRET=1 and --rehearse")
    cl = cases(a.full, device == "cpu")
    workers = a.workers or max(1, (os.cpu_count() or 2) - 4)
    deadline = time.monotonic() + a.budget if a.budget else None
    res, not_run, _ = run_matrix(cl, device, workers=workers, deadline=deadline, rehearse=device == "cpu",
                              log=lambda r: print(("ok  " if r["ok"] else "FAIL") + f" {r['loss']} {r['path']} "
                                                  f"{r['dtype']} K={r['k']} {r['s']:.1f}s " + "; ".join(r["fails"]),
                                                  flush=True))
    print(f"{sum(r['ok'] for r in res)}/{len(res)} passed, {len(not_run)} not run")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(results=res, not_run=not_run), indent=1))
    sys.exit(0 if all(r["ok"] for r in res) else 1)


if __name__ == "__main__":
    main()
