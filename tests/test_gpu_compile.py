"""The kernels compile for a real GPU (sm_90), checked without one.

The rest of the suite runs the kernels in Triton's interpreter, which accepts programs
the GPU compiler rejects and says nothing about registers or memory access. Here
benchmarks/kernel_resources.py drives the real launch helpers with Triton's CUDA
backend targeting sm_90 (compile, no launch; the ptxas bundled with Triton), in a
subprocess without TRITON_INTERPRET, for every loss on every path. Then:
- every loss compiles on the single-block, streaming and split-row paths, and the
  class-parallel shard kernels compile;
- ptxas spills no registers for 16/32-bit logits (its -v report, and no LDL/STL);
- at least a quarter of an SM's warp slots can be resident (registers permitting);
- rows whose starts are 16-byte aligned (K = 1000, 32000) are read with 128-bit loads,
  and rows that are not (K = 1001) are not, so the alignment analysis is exact both ways.

Each check runs twice: with the installed Triton, and with the Triton of the GPU
machines' image (``GPU_IMAGE_TRITON``), which ``scripts/setup_env.sh test`` unpacks into
``<venv>/triton-gpu-image``: the GPU check (benchmarks/gpu_check.sh) runs the kernels with
that one, and Triton's language changes between releases (3.9's ``fdiv(approx=)`` is not
in 3.6). ``fused_anl.functional.MIN_TRITON`` is the older of the two.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The GPU machines' Triton (their image's torch 2.11 brings it; benchmarks/README.md).
GPU_IMAGE_TRITON = "3.6.0"


def _triton_env(build: str) -> dict:
    """The environment of a compile-only subprocess with Triton ``build``: "installed" (the
    test environment's) or "gpu-image" (``GPU_IMAGE_TRITON``: the installed one if it is
    that release, else the copy scripts/setup_env.sh unpacked beside the venv)."""
    import triton

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = [ROOT]
    if build == "gpu-image" and triton.__version__ != GPU_IMAGE_TRITON:
        side = os.path.join(sys.prefix, "triton-gpu-image")
        if not os.path.isfile(os.path.join(side, "triton", "__init__.py")):
            pytest.fail(f"Triton {GPU_IMAGE_TRITON} (the GPU image's) is not in {side}: "
                        "run `bash scripts/setup_env.sh test` (or pip install --no-deps "
                        f"--target {side} triton=={GPU_IMAGE_TRITON})")
        path.insert(0, side)
        env["TRITON_CACHE_DIR"] = os.path.join(side, "cache")  # not the installed one's
    env["PYTHONPATH"] = os.pathsep.join(path + [env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


@pytest.fixture(scope="session", params=["installed", "gpu-image"])  # once per process
def sm90(request, tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("sm90") / "rows.json"
    env = _triton_env(request.param)
    version = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if request.param == "gpu-image":
        assert version.stdout.strip() == GPU_IMAGE_TRITON, version.stdout + version.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.kernel_resources", "--quick", "--arch", "90",
         "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"Triton {version.stdout.strip()}:\n" + proc.stdout[-3000:]
                                  + proc.stderr[-3000:])
    return json.loads(out.read_text())


def test_min_triton_is_the_oldest_checked():
    """The floor the package states (MIN_TRITON; pyproject's triton>=) is a release this
    module compiles the kernels with, and the GPU image's is not below it."""
    import re

    from fused_anl.functional import MIN_TRITON, _release

    assert _release(GPU_IMAGE_TRITON) == MIN_TRITON
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        floors = set(re.findall(r'"triton>=([0-9.]+)"', f.read()))
    assert floors == {".".join(map(str, MIN_TRITON))}, floors


def test_every_loss_compiles_on_every_path(sm90):
    from fused_anl import LOSSES

    paths = {}
    for r in sm90:
        paths.setdefault(r["loss"], set()).add(r["path"])
    for loss in LOSSES:
        assert {"single", "stream"} <= paths[loss], (loss, paths.get(loss))
    assert "persistent" in paths["anl_ce"] and "persistent" in paths["ce"]
    for loss in ("ce", "anl_ce", "anl_fl", "nce_rce"):
        assert "split" in paths[loss]
    kernels = {(r["path"], r["kernel"]) for r in sm90}
    for k in ("split_stats1_kernel", "split_stats2_kernel", "split_finish_kernel"):
        assert ("split", k) in kernels and ("shard", k) in kernels


def test_no_register_spills(sm90):
    spilled = [(r["loss"], r["dtype"], r["path"], r["kernel"], r["spill_bytes"])
               for r in sm90 if r["dtype"] != "float64"
               and (r["spill_bytes"] or r["local_bytes"] or r["spill_instr"])]
    assert not spilled


_ROOFLINE_PROBE = """
import json, torch
from benchmarks import kernel_resources as kr
stream = kr.compile_case("anl_ce", torch.bfloat16, 16384, 32768, profile=True)
bwd = kr.compile_scale()
m = kr.model(stream, bwd, 16384, 32768)
# the single block stretched over K = 32768 (32 elements per thread): spills
spill = kr.compile_case("anl_ce", torch.bfloat16, 64, 32768, config=dict(max_single_k=32768))
print(json.dumps(dict(stream=stream, model=m, spill=spill)))
"""


@pytest.fixture(scope="session")  # once per test process: xdist may interleave modules
def roofline_probe():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _ROOFLINE_PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_roofline_counts_loop_instructions(roofline_probe):
    """The streaming ANL-CE kernel has a loop per pass (stats1, stats2, gradient) and the
    counter turns them into a positive per-element figure, with exp2 on the MUFU."""
    (r,) = roofline_probe["stream"]
    loops = r["sass"]["loops"]
    assert r["path"] == "stream" and len(loops) == 3, loops
    assert all(lp["instr"] > 0 and lp["ldg"] > 0 for lp in loops)
    assert loops[-1]["stg"] > 0  # the gradient pass writes
    m = roofline_probe["model"]
    assert m["read_passes"] == 3 and m["write_passes"] == 1
    assert m["fwd_instr_per_elem"] > 1 and m["mufu_per_elem"].get("MUFU.EX2", 0) > 0
    # grad_output == 1: no N x K bytes in backward, a few instructions per program
    assert m["go_other"]["bytes_per_elem"] == pytest.approx(m["go1"]["bytes_per_elem"] + 4)
    assert 0 < m["bwd_go1_instr_per_elem"] < m["bwd_other_instr_per_elem"]


def test_spills_are_reported(roofline_probe):
    """A configuration that spills (one block of 32768 bf16 ANL-CE logits) reports it:
    spills go to the stack frame, so cuobjdump's LOCAL alone would say 0."""
    (r,) = roofline_probe["spill"]
    assert r["path"] == "single"
    assert r["spill_bytes"] > 0 and r["spill_instr"] > 0, r


def test_occupancy_floor(sm90):
    low = [(r["loss"], r["dtype"], r["path"], r["regs"], r["num_warps"], r["occupancy"])
           for r in sm90 if r["dtype"] != "float64" and r["occupancy"] < 0.25]
    assert not low


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_aligned_rows_use_128_bit_loads(sm90, dtype):
    def find(k, grad=True):
        (r,) = [r for r in sm90 if r["loss"] == "anl_ce" and r["dtype"] == dtype
                and r["K"] == k and r["grad"] == grad]
        return r

    assert find(1000)["ldg128"] > 0 and find(1000)["stg128"] > 0
    assert find(32000, grad=False)["ldg128"] > 0
    assert find(1001)["ldg128"] == 0 and find(1001)["stg128"] == 0


def test_row_vec_is_exact():
    """The divisibility the kernels are told (VEC) must hold for every row start."""
    pytest.importorskip("triton")
    import torch

    from fused_anl.kernels.launch import row_vec

    def v(z, g=None):
        return row_vec(z.reshape(z.shape[0], z.shape[1], -1) if z.dim() == 2 else z, g)

    assert v(torch.empty(4, 1000, dtype=torch.bfloat16)) == 8
    assert v(torch.empty(4, 1000, dtype=torch.float32)) == 4
    assert v(torch.empty(4, 1000, dtype=torch.float64)) == 2
    assert v(torch.empty(4, 1001, dtype=torch.bfloat16)) == 1
    assert v(torch.empty(4, 1004, dtype=torch.bfloat16)) == 4
    assert v(torch.empty(4, 1002, dtype=torch.float32)) == 2
    # a column slice: rows of 1000 inside rows of 1024 -> K limits it; row stride 1024 fine
    assert v(torch.empty(4, 1024, dtype=torch.bfloat16)[:, :1000]) == 8
    assert v(torch.empty(4, 1030, dtype=torch.bfloat16)[:, :1000]) == 2
    # (N, K, D) with K not innermost: no vector loads along K
    assert row_vec(torch.empty(2, 64, 3)) == 1
    # (N, D, K) seen as (N, K, D): K contiguous, d stride must divide too
    z = torch.empty(2, 3, 64).transpose(1, 2)
    assert row_vec(z) == 4
    z = torch.empty(2, 3, 66).transpose(1, 2)[:, :64]
    assert row_vec(z) == 2
    # the gradient's layout counts too (fp32 grad of bf16 logits: 4 per 16 bytes)
    z = torch.empty(4, 1000, 1, dtype=torch.bfloat16)
    assert row_vec(z, torch.empty(4, 1000, 1)) == 4
    assert row_vec(z, torch.empty(4, 1002, 1)[:, :1000]) == 2


def test_tune_script_runs(tmp_path):
    """benchmarks/tune.py (the GPU launch-policy sweep) end to end on tiny shapes under
    the interpreter: the GPU session must not be the first to run it. Its times mean
    nothing here; its bookkeeping (plans, dedup, recommendation, report) is checked."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "benchmarks/tune.py", "--smoke", "--losses", "anl_ce",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "tune.json").read_text())
    assert res["recommended"] is not None and set(res["candidates"]) <= set(res["recommended"])
    plans = {tuple(r[:3]) for r in res["results"]}
    assert plans == {("anl_ce", 8, 24), ("anl_ce", 8, 100)}
    assert [r["rows"] for r in res["split"]] == [2, 8] and "split_max_rows" in res["split_recommended"]
    assert "grid" in (tmp_path / "tune.md").read_text()  # the persistent plans were timed
