"""The stages of benchmarks/gpu_check.sh, one process each (the orchestrator,
benchmarks/gpu_check.py, kills a stage at its time slice):

    python -m benchmarks.gpu_stages STAGE --work DIR --budget SECONDS [--rehearse] [--long]

STAGE: ``env`` (device, driver, versions, measured copy bandwidth), ``correctness``
(tests/test_cuda.py beside the GPU smoke matrix of benchmarks/gpu_smoke.py, and a
warm-up process that fills Triton's and Inductor's on-disk caches for the benchmark),
``bench`` (the headline benchmark through benchmarks/run.py's ``run_tasks``), ``tune``
(the launch-policy sweep of benchmarks/tune.py on the headline cases), ``warm`` (the
warm-up itself). Each writes ``DIR/<stage>.json`` (status, what ran, what the budget
cut) and stops starting work ``--budget`` seconds after its start.

``--rehearse``: no GPU; tiny shapes; the kernels under the Triton interpreter (the
benchmark on the CPU torch path); CUDA-only pieces replaced by labelled CPU stand-ins.
``--long``: the long versions (whole test suite, full matrix, full benchmark and sweep).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HEAD_N, HEAD_KS, LIN_D = 16384, (32768, 128256), 4096
REH_N, REH_KS, REH_LIN = 64, (256, 1024), dict(n=32, d=16)
STAND_IN = "CPU stand-in (rehearsal, no GPU): not a GPU figure"


def _write(work, stage, data):
    (Path(work) / f"{stage}.json").write_text(json.dumps(data, indent=1, default=str))


def _py():
    return sys.executable


# ------------------------------------------------------------------------------ env


def stage_env(a):
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                platform=platform.platform())
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"not importable ({type(e).__name__})"
    for mod in ("liger_kernel", "cut_cross_entropy"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "importable")
        except Exception as e:  # noqa: BLE001
            info[mod] = f"not importable ({type(e).__name__})"
    if torch.cuda.is_available() and not a.rehearse:
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}")
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["driver"] = q.stdout.strip() or q.stderr.strip()
        except Exception as e:  # noqa: BLE001
            info["driver"] = f"nvidia-smi failed ({type(e).__name__})"
        from benchmarks import common as C
        z = torch.empty(HEAD_N, HEAD_KS[0], dtype=torch.bfloat16, device="cuda").normal_()
        info["copy_gbps"] = C.copy_bandwidth(z, "cuda", reps=20) / 1e9
        info["copy_note"] = (f"dst.copy_(src), {z.numel() * 2 / 2**30:.2f} GiB bf16, read + write, "
                             "CUDA events, L2 flushed")
    else:
        info.update(device=f"cpu ({platform.machine()}, {os.cpu_count()} cores)", driver="n/a (no GPU)")
        z = torch.randn(1 << 22)
        dst = torch.empty_like(z)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(z)
            times.append(time.perf_counter() - t0)
        info["copy_gbps"] = 2 * z.numel() * 4 / sorted(times)[2] / 1e9
        info["copy_note"] = f"{STAND_IN}: memcpy of 16 MiB on the CPU, time.perf_counter"
    _write(a.work, "env", dict(status="ok", info=info))
    for k, v in info.items():
        print(f"{k}: {v}")


# ------------------------------------------------------------------------------ correctness


def _pytest_cmd(a, files):
    cmd = [_py(), "-m", "pytest", *files, "-q", "-rfE", "-p", "no:cacheprovider", "--maxfail=50"]
    if a.long:
        try:
            import xdist  # noqa: F401
            cmd += ["-n", str(min(12, max(1, (os.cpu_count() or 2) - 2)))]
        except ImportError:
            pass
    return cmd


def _failed_tests(text):
    return [ln.split(" - ")[0].split(" ", 1)[1] for ln in text.splitlines()
            if ln.startswith(("FAILED ", "ERROR "))]


def stage_correctness(a):
    from benchmarks import gpu_smoke  # light: imports torch and fused_anl lazily
    start = time.monotonic()
    deadline = start + a.budget
    cuda = False
    if not a.rehearse:
        import torch
        cuda = torch.cuda.is_available()
    work = Path(a.work)
    env = dict(os.environ)
    if not cuda:
        env["TRITON_INTERPRET"] = "1"
    # 1. tests/test_cuda.py (the whole suite with --long) in the background
    files = ["tests"] if a.long else ["tests/test_cuda.py"]
    tlog = open(work / "tests.log", "w")
    tests = subprocess.Popen(_pytest_cmd(a, files), stdout=tlog, stderr=subprocess.STDOUT, env=env,
                             cwd=str(ROOT))
    # 2. the warm-up for the benchmark and the sweep (GPU, short check only)
    warm = None
    if cuda and not a.long:
        warm = subprocess.Popen([_py(), "-m", "benchmarks.gpu_stages", "warm", "--work", a.work,
                                 "--budget", str(max(5.0, a.budget - 10))], cwd=str(ROOT),
                                stdout=open(work / "warm.log", "w"), stderr=subprocess.STDOUT)
    # 3. the smoke matrix on a process pool
    workers = 1 if not cuda else max(2, min(10, (os.cpu_count() or 4) - 5))
    slog = open(work / "smoke.log", "w")

    def log(r):
        slog.write(("ok   " if r["ok"] else "FAIL ") + f"{r['loss']} {r['path']} {r['dtype']} K={r['k']} "
                   f"{r['s']:.1f}s {'; '.join(r['fails'])}\n")
        slog.flush()
    results, not_run, cases = gpu_smoke.run_matrix(None, "cuda" if cuda else "cpu", workers=workers,
                                                   deadline=deadline - 8, rehearse=not cuda, log=log,
                                                   full=a.long)
    # 4. collect the tests within the slice
    tests_status = "ok"
    try:
        tests.wait(timeout=max(1.0, deadline - 3 - time.monotonic()))
    except subprocess.TimeoutExpired:
        tests.kill()
        tests.wait()
        tests_status = "cut by the budget (killed)"
    tlog.close()
    if warm is not None:
        try:
            warm.wait(timeout=max(0.5, deadline - 1 - time.monotonic()))
        except subprocess.TimeoutExpired:
            warm.kill()
            warm.wait()
    ttext = (work / "tests.log").read_text(errors="replace")
    tail = ttext.strip().splitlines()[-1] if ttext.strip() else "(no output)"
    failed_smoke = [r for r in results if not r["ok"]]
    out = dict(
        status="cut" if (not_run or tests_status != "ok") else "ok",
        tests=dict(files=files, exit=tests.returncode, status=tests_status, summary=tail,
                   failed=_failed_tests(ttext),
                   label=None if cuda else f"{STAND_IN}: the CUDA tests are collected and skip"),
        smoke=dict(cases=len(cases), run=len(results), passed=len(results) - len(failed_smoke),
                   failed=[f"{r['loss']} {r['path']} {r['dtype']} K={r['k']}: {'; '.join(r['fails'])}"
                           for r in failed_smoke],
                   not_run=[" ".join(map(str, c)) for c in not_run], workers=workers,
                   label=None if cuda else f"{STAND_IN}: Triton interpreter, tiny shapes, one loss per path"),
        seconds=round(time.monotonic() - start, 1))
    out["failed"] = bool(out["tests"]["failed"] or (tests.returncode not in (0, 5) and tests_status == "ok")
                         or failed_smoke)
    _write(a.work, "correctness", out)
    (work / "smoke.json").write_text(json.dumps(results, indent=1))
    print(f"tests: {tail}; smoke: {out['smoke']['passed']}/{len(results)} passed, {len(not_run)} not run")


def stage_warm(a):
    """Fill the on-disk caches while the correctness stage runs: the fused kernels at the
    benchmark's shapes and the sweep's plans (Triton), then torch.compile of the
    reference at the headline shapes (Inductor's FX graph cache)."""
    import torch
    import fused_anl
    from fused_anl.kernels import launch
    from benchmarks import common as C
    from benchmarks import tune as T
    deadline = time.monotonic() + a.budget
    done = []
    for loss in ("anl_ce", "ce", "anl_fl", "nce_rce"):
        z = torch.randn(1024, HEAD_KS[0], device="cuda", dtype=torch.bfloat16, requires_grad=True)
        t = torch.randint(0, HEAD_KS[0], (1024,), device="cuda")
        getattr(fused_anl, loss)(z, t).backward()
        done.append(f"fused {loss}")
    timer = T.Timer("cuda", 0, reps=dict(warmup=1, min_reps=1, max_reps=1))
    for cfg in T.sweep_configs(TUNE_CANDIDATES):
        for loss in TUNE_LOSSES:
            if time.monotonic() > deadline:
                break
            timer.time(loss, 1024, HEAD_KS[0], cfg)
    done.append("sweep plans")
    for k in HEAD_KS:
        for loss in ("anl_ce", "ce"):
            if time.monotonic() > deadline - 30:
                break
            z, t = C.make_inputs(HEAD_N, k, torch.bfloat16, "cuda")
            run = C.step(C.compiled_fn(loss), z, t, "fwd+bwd")
            run()
            torch.cuda.synchronize()
            del run, z, t
            C.free("cuda")
            done.append(f"compiled {loss} K={k}")
    print("warmed:", ", ".join(done), flush=True)


# ------------------------------------------------------------------------------ bench


def stage_bench(a):
    import torch
    from benchmarks import run as R
    from benchmarks import common as C
    start = time.monotonic()
    cuda = torch.cuda.is_available() and not a.rehearse
    if a.long:  # the whole matrix, as python benchmarks/run.py
        rc = R.main(["--out", str(Path(a.work) / "bench"), "--budget", str(max(10.0, a.budget - 60))])
        _write(a.work, "bench", dict(status="ok", long=True, exit=rc))
        return
    device = "cuda" if cuda else "cpu"
    n, ks = (HEAD_N, HEAD_KS) if cuda else (REH_N, REH_KS)
    c = lambda loss, k: (loss, "bfloat16", n, k, "fwd+bwd")  # noqa: E731
    tasks = []
    for k in ks:
        tasks.append((0, "loss", c("anl_ce", k), ["fused", "eager", "compiled"]))
        tasks.append((0, "loss", c("ce", k), ["fused", "torch_ce", "eager", "liger"]))
    for loss in ("anl_fl", "nce_rce"):
        for k in ks:
            tasks.append((1, "loss", c(loss, k), ["fused"]))
    later = [(3, "loss", c("ce", k), ["compiled"]) for k in ks]
    lin = (dict(losses=["anl_ce", "ce"], n=HEAD_N, d=LIN_D, ks=[HEAD_KS[1]], dtype="bfloat16")
           if cuda else dict(losses=["anl_ce", "ce"], ks=[ks[0]], dtype="bfloat16", cpu_memory=False, **REH_LIN))
    lin["impls"] = ["fused_linear", "unfused", "liger_flce", "cce"]
    deadline = start + a.budget
    if not cuda:
        R.TIMING["cpu"] = dict(warmup=1, min_reps=2, max_reps=3, target_s=0.05)
    rows, lin_rows, cut, copies, _ = R.run_tasks(tasks, device, deadline, linear=lin)
    rows2, _, cut2, copies2, _ = R.run_tasks(later, device, deadline)
    rows, cut = rows + rows2, cut + cut2
    copies.update(copies2)
    R.speedups(rows)
    tgt = R.targets(rows, lin_rows, device, n=n, ks=ks, linear_k=lin["ks"][0], gpu=True)
    md = R.table(rows) + "\n\n" + R.linear_table(lin_rows) + "\n\n```\n" + tgt + "\n```\n"
    (Path(a.work) / "bench.md").write_text(md)
    _write(a.work, "bench", dict(
        status="cut" if cut else "ok", rows=R.sort_rows(rows), linear=lin_rows, cut=cut,
        copy_gbps={str(b): bw / 1e9 for b, bw in copies.items()}, targets=tgt.splitlines(),
        label=None if cuda else f"{STAND_IN}: the torch path at N={n}, K={ks}; times mean nothing",
        seconds=round(time.monotonic() - start, 1)))
    print(md)


# ------------------------------------------------------------------------------ tune

TUNE_CANDIDATES = dict(block_k=(4096, 8192, 16384), elems_per_thread=(8, 16), programs_per_sm=(0, 2, 4))
TUNE_LOSSES = ("anl_ce", "ce")


def stage_tune(a):
    import torch
    from benchmarks import tune as T
    from benchmarks import common as C
    from fused_anl.kernels import launch
    start = time.monotonic()
    cuda = torch.cuda.is_available() and not a.rehearse
    if a.long:
        T.main(["--out", str(Path(a.work) / "tune"), "--budget", str(max(10.0, a.budget - 30))])
        _write(a.work, "tune", dict(status="ok", long=True))
        return
    device = "cuda" if cuda else "cpu"
    if cuda:
        cands, ks, rows, losses = TUNE_CANDIDATES, HEAD_KS, HEAD_N, TUNE_LOSSES
    else:
        cands = dict(T.SMOKE["candidates"], block_k=(8,), elems_per_thread=(1,))
        ks, rows, losses = T.SMOKE["ks"][:1], 4, TUNE_LOSSES[:1]
    timer = T.Timer(device, a.budget - 5, **({} if cuda else dict(reps=dict(warmup=1, min_reps=1, max_reps=1))))
    copy_bw = None
    if cuda:
        z, _ = C.make_inputs(HEAD_N, HEAD_KS[0], torch.bfloat16, device)
        copy_bw = C.copy_bandwidth(z, device)
        del z
    configs, results, cut = T.sweep_rows(timer, list(losses), cands, ks, rows)
    rec_i, score = T.recommend(configs, results)
    name = torch.cuda.get_device_name() if cuda else "cpu (interpreter, rehearsal)"
    text = T.report(name, launch.sm_count(device), list(cands), configs, results, rec_i, score, [], {},
                    copy_bw, cut)
    (Path(a.work) / "tune.md").write_text(text)
    from dataclasses import asdict
    rec = {f: getattr(configs[rec_i], f) for f in cands} if rec_i is not None else None
    cur = {f: getattr(launch.get_config(), f) for f in cands}
    _write(a.work, "tune", dict(
        status="cut" if cut else "ok", recommended=rec, current=cur, score={str(i): s for i, s in score.items()},
        configs=[asdict(c) for c in configs], timings=len(results),
        label=None if cuda else f"{STAND_IN}: interpreter, tiny shapes; times mean nothing",
        seconds=round(time.monotonic() - start, 1)))
    print(text)


STAGES = dict(env=stage_env, correctness=stage_correctness, bench=stage_bench, tune=stage_tune,
              warm=stage_warm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=list(STAGES))
    ap.add_argument("--work", required=True, help="folder for the stage's JSON and logs")
    ap.add_argument("--budget", type=float, required=True, help="seconds from the start")
    ap.add_argument("--rehearse", action="store_true")
    ap.add_argument("--long", action="store_true")
    a = ap.parse_args(argv)
    STAGES[a.stage](a)


if __name__ == "__main__":
    main()
