"""Orchestrator of benchmarks/gpu_check.sh: runs the stages of benchmarks/gpu_stages.py
one process each under a hard time budget (a slice per stage), then writes at most
eight files into one folder and prints the summary last.

    python -m benchmarks.gpu_check [--rehearse] [tests|smoke|bench|tune]

Default: the five-minute check (``SLICES``, 300 s in all with the report). With
``--rehearse``: the same stages on a machine without a GPU (``REHEARSAL_SLICES``,
60 s). A positional argument runs one long stage (``LONG``) instead.

The folder: ``$GPU_CHECK_OUT``, else ``$OUT`` (the device tool returns only what is
written there), else ``benchmarks/results/<device-slug>-<date>/`` (the rehearsal:
``/tmp/gpu_check_rehearsal-<date>/``). Files: ``summary.md``, ``results.json``,
``tests.txt``, ``env.txt``, ``logs.tar.gz``; no folder inside.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (stage, seconds). The slices add up to 290 s; the report gets the last 10 of 300.
SLICES = (("env", 15), ("correctness", 125), ("bench", 110), ("tune", 40))
REHEARSAL_SLICES = (("env", 6), ("correctness", 28), ("bench", 12), ("tune", 10))  # 56 s + 4 s report
TOTAL_S, REHEARSAL_TOTAL_S = 300, 60
# One long stage per command, each inside a 10-minute device command.
LONG = dict(tests=("correctness", 540), smoke=("correctness", 540), bench=("bench", 540),
            tune=("tune", 540))
MAX_FILES = 8
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")
QUACK = ("QuACK (quack-kernels) is not run: its CUTLASS DSL runtime is a 92 MB wheel, over what "
         "travels. Compared through its published figures only: QuACK's cross entropy at 90-95% "
         "of peak bandwidth on H100 (published, not measured here).")


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the sources (package, kernels, benchmarks, tests, pyproject): names
    the tree where no .git travelled; recompute it at a commit to match."""
    h = hashlib.sha256()
    files = sorted(p for d in ("fused_anl", "kernels", "benchmarks", "tests") for p in (root / d).rglob("*.py"))
    files.append(root / "pyproject.toml")
    for p in files:
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def revision() -> dict:
    rev = dict(source_digest=source_digest())
    env_rev = os.environ.get("GIT_REVISION")
    f = ROOT / "REVISION"
    try:
        q = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=str(ROOT),
                           capture_output=True, text=True, timeout=10)
        rev["git"] = q.stdout.strip() if q.returncode == 0 and q.stdout.strip() else "unknown"
    except Exception:  # noqa: BLE001
        rev["git"] = "unknown"
    if env_rev:
        rev["caller"] = env_rev
    elif f.is_file():
        rev["caller"] = f.read_text().strip()[:80]
    return rev


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def run_stage(stage, seconds, work, *, rehearse, long, env):
    """Run one stage with a hard timeout; its JSON, or a record of why there is none."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_stages", stage, "--work", str(work),
           "--budget", str(max(1.0, seconds - (2 if rehearse else 6)))]
    cmd += ["--rehearse"] if rehearse else []
    cmd += ["--long"] if long else []
    t0 = time.monotonic()
    print(f"== {stage} (slice {seconds:.0f} s) ==", flush=True)
    with open(work / f"{stage}.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)  # the stage and its children (pool workers, pytest)
            p.wait()
            rc = "killed"
    used = time.monotonic() - t0
    jf = work / f"{stage}.json"
    if jf.is_file():
        res = json.loads(jf.read_text())
    else:
        tail = (work / f"{stage}.log").read_text(errors="replace").strip().splitlines()[-3:]
        res = dict(status="killed at its slice" if rc == "killed" else f"crashed (exit {rc})",
                   error=" | ".join(tail)[-600:])
    if rc not in (0, "killed") and res.get("status") in ("ok", "cut"):
        res["status"] = f"crashed (exit {rc}) after writing its results"
    res.update(slice_s=seconds, used_s=round(used, 1), exit=rc)
    print(f"   {stage}: {res['status']} in {used:.1f} s", flush=True)
    return res


def targets_table(bench):
    """Issue 19's targets from the benchmark's check lines: PASS, FAIL or MISSED."""
    out = []
    for line in bench.get("targets", []):
        verdict, _, rest = line.partition("  ")
        verdict = {"n.a.": "MISSED"}.get(verdict.strip(), verdict.strip())
        out.append((verdict, rest.strip()))
    if not out:
        out.append(("MISSED", f"every target: the benchmark stage did not report ({bench.get('status')})"))
    return out


def _static_comparison(stages, info):
    """compare_static's table for the fused bench rows against the committed static report
    of the GPU image's Triton (a line saying why, if it cannot be made)."""
    try:
        from benchmarks import compare_static as CS

        with open(Path(CS.__file__).parent / "results" / CS.DEFAULT_STATIC / "roofline.json") as f:
            static = json.load(f)
        results = dict(env=info, date=str(datetime.date.today()), stages=stages)
        return CS.report(CS.compare(results, static), results, static).splitlines()[2:]
    except Exception as e:  # noqa: BLE001 - the summary must still be written
        return [f"(not made: {type(e).__name__}: {e})"]


def summarize(stages, env, rev, mode, total_s, out_dir):
    info = env.get("info", {})
    lines = [f"# GPU check ({mode}): {info.get('device', '?')}, {datetime.date.today()}", ""]
    if mode == "rehearsal":
        lines += ["**Rehearsal on a CPU: every figure below is a stand-in, not a GPU measurement.**", ""]
    lines.append(f"revision: git {rev.get('git')}" + (f", caller {rev['caller']}" if rev.get("caller") else "")
                 + f", source digest {rev['source_digest']}")
    lines.append(f"torch {info.get('torch')} (CUDA {info.get('cuda')}), triton {info.get('triton')}, "
                 f"python {info.get('python')}, driver {info.get('driver')}; liger {info.get('liger_kernel')}, "
                 f"cce {info.get('cut_cross_entropy')}")
    if "copy_gbps" in info:
        lines.append(f"copy bandwidth: {info['copy_gbps']:.0f} GB/s ({info.get('copy_note')})")
    lines += ["", "| stage | slice s | used s | status |", "|---|---:|---:|---|"]
    for name, res in stages.items():
        lines.append(f"| {name} | {res['slice_s']:.0f} | {res['used_s']:.1f} | {res['status']} |")
    lines.append(f"| total | {total_s:.0f} | {sum(r['used_s'] for r in stages.values()):.1f} | |")

    bench = stages.get("bench", {})
    if "targets" in bench or not bench.get("long"):
        lines += ["", "## Targets (issue 19), on the copy bandwidth measured in the same run", ""]
        if bench.get("label"):
            lines.append(f"({bench['label']})")
        for verdict, text in targets_table(bench):
            lines.append(f"- {verdict}: {text}")
        lines.append(f"- {QUACK}")
    rows = [r for r in bench.get("rows", []) if "ms" in r]
    if rows:
        lines += ["", "## Headline (fwd+bwd)", "", "| loss | K | impl | ms | GB/s | % of copy | peak MiB | fused x |",
                  "|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['loss']} | {r['k']} | {r['impl']} | {r['ms']:.3f} | {r['gbps']:.0f} | "
                         f"{100 * r['frac_copy']:.1f} | {r.get('peak_extra_mib', float('nan')):.0f} | "
                         f"{r.get('fused_speedup', 1.0):.2f} |")
        for r in bench.get("linear", []):
            if "ms" in r:
                lines.append(f"| linear {r['loss']} | {r['k']} | {r['impl']} | {r['ms']:.2f} | | | "
                             f"{r.get('peak_extra_mib', float('nan')):.0f} | {r.get('time_vs_unfused', 0):.2f} (/unfused) |")
    if rows:
        lines += ["", "## Measured vs static estimate (benchmarks/compare_static.py)", ""]
        lines += _static_comparison(stages, info)
    tune = stages.get("tune", {})
    if tune.get("recommended") is not None:
        lines += ["", f"## Launch policy: recommended {tune['recommended']} (current {tune['current']}); "
                  f"{tune.get('timings', 0)} timings" + (f" ({tune['label']})" if tune.get("label") else "")]

    corr = stages.get("correctness", {})
    fails = []
    if corr.get("tests"):
        t = corr["tests"]
        fails += [f"test {n}" for n in t.get("failed", [])]
        if t.get("exit") not in (0, 5, None) and not t.get("failed"):
            fails.append(f"tests {' '.join(t['files'])}: exit {t['exit']} ({t['status']}): {t['summary']}")
    if corr.get("smoke"):
        fails += [f"smoke {f}" for f in corr["smoke"]["failed"]]
    lines += ["", "## Correctness", ""]
    if corr.get("tests"):
        t, s = corr["tests"], corr["smoke"]
        lines.append(f"- {' '.join(t['files'])}: {t['summary']}" + (f" ({t['label']})" if t.get("label") else ""))
        lines.append(f"- smoke matrix: {s['passed']}/{s['run']} cases passed, {len(s['not_run'])} not run "
                     f"(of {s['cases']}; {s['workers']} workers)" + (f" ({s['label']})" if s.get("label") else ""))
    else:
        lines.append(f"- not reported: {corr.get('status')} {corr.get('error', '')}")
    lines += ["", f"## Failing ({len(fails)})", ""] + ([f"- {f}" for f in fails[:60]] or ["- none"])
    if len(fails) > 60:
        lines.append(f"- ... and {len(fails) - 60} more (tests.txt)")
    cut = []
    for name, res in stages.items():
        if res["status"] not in ("ok",):
            cut.append(f"{name}: {res['status']}" + (f" ({res['error']})" if res.get("error") else ""))
    nr = corr.get("smoke", {}).get("not_run", [])
    if nr:
        cut.append(f"correctness: {len(nr)} smoke cases not run: " + "; ".join(nr[:25]) + (" ..." if len(nr) > 25 else ""))
    if corr.get("tests", {}).get("status", "ok") != "ok":
        cut.append(f"correctness: tests {corr['tests']['status']}")
    if bench.get("cut"):
        cut.append(f"bench: {len(bench['cut'])} measurements not run: " + "; ".join(bench["cut"]))
    if tune.get("status") == "cut":
        cut.append("tune: the sweep was cut; the recommendation covers the cases every candidate ran on")
    lines += ["", "## Cut by the budget", ""] + ([f"- {c}" for c in cut] or ["- nothing"])
    lines += ["", f"files: {out_dir}"]
    return "\n".join(lines) + "\n", fails


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    rehearse = "--rehearse" in argv
    argv = [x for x in argv if x != "--rehearse"]
    if len(argv) > 1 or (argv and argv[0] not in LONG):
        print(f"usage: gpu_check.sh [--rehearse] [{'|'.join(LONG)}]", file=sys.stderr)
        return 2
    long = bool(argv)
    slices = ((LONG[argv[0]],) if long else (REHEARSAL_SLICES if rehearse else SLICES))
    total = REHEARSAL_TOTAL_S if rehearse else TOTAL_S
    assert long or sum(s for _, s in slices) <= total - (4 if rehearse else 10)
    # GPU_CHECK_TIME_SCALE stretches every slice (a loaded machine: the test suite's
    # rehearsal uses it so that a busy CI machine cuts nothing; stages end when done).
    scale = float(os.environ.get("GPU_CHECK_TIME_SCALE", "1"))
    slices = tuple((n, s * scale) for n, s in slices)
    total *= scale
    mode = "rehearsal" if rehearse else (f"long {argv[0]}" if long else "five-minute check")
    t_start = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if rehearse:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", "1")  # no spinning OpenMP threads on a shared CPU
    else:
        env.pop("TRITON_INTERPRET", None)
    rev = revision()
    stages = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        env_res = {}
        for name, seconds in ((("env", 15 * scale),) + slices if long else slices):
            res = run_stage(name, seconds, work, rehearse=rehearse, long=long and name != "env", env=env)
            stages[name] = res
            if name == "env":
                env_res = res
        device = env_res.get("info", {}).get("device", "unknown")
        date = datetime.date.today().isoformat()
        default = (Path("/tmp") / f"gpu_check_rehearsal-{date}" if rehearse
                   else ROOT / "benchmarks" / "results" / f"{_slug(device)}-{date}")
        out = Path(os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or default)
        out.mkdir(parents=True, exist_ok=True)
        summary, fails = summarize(stages, env_res, rev, mode, total, out)
        results = dict(mode=mode, date=date, revision=rev, env=env_res.get("info"), stages=stages,
                       wall_s=round(time.monotonic() - t_start, 1))
        info = env_res.get("info", {})
        env_txt = "\n".join(f"{k}: {v}" for k, v in dict(info, **{f"revision_{k}": v for k, v in rev.items()}).items())
        tests_txt = ""
        for f in ("tests.log", "smoke.log"):
            if (work / f).is_file():
                tests_txt += f"==== {f} ====\n" + (work / f).read_text(errors="replace") + "\n"
        written = {"summary.md": summary, "results.json": json.dumps(results, indent=1, default=str),
                   "tests.txt": tests_txt or "(no test output)\n", "env.txt": env_txt + "\n"}
        for name, text in written.items():
            (out / name).write_text(text)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for p in sorted(work.iterdir()):
                if p.is_file():
                    tar.add(p, arcname=p.name)
        (out / "logs.tar.gz").write_bytes(buf.getvalue())
    wall = time.monotonic() - t_start
    crashed = [n for n, r in stages.items() if not r["status"].startswith(("ok", "cut"))]
    print()
    print(summary.rstrip())
    print(f"wall time {wall:.0f} s (budget {total if not long else 'long'} s); "
          f"{len(fails)} failing; crashed stages: {', '.join(crashed) or 'none'}")
    # 0: every stage ran (done or cut by its slice) and the files are written; the
    # failures are in the summary. GPU_CHECK_STRICT=1: 1 when anything failed too.
    strict = os.environ.get("GPU_CHECK_STRICT") == "1"
    return 1 if (crashed or (strict and fails)) else 0


if __name__ == "__main__":
    sys.exit(main())
