"""The CPU rehearsal of the GPU check (benchmarks/gpu_check.sh --rehearse): the same
script, stages and file writing as on a GPU, so that a typo, a missing import or a
wrong path fails here rather than in a GPU machine's few minutes."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402

STAGES = [name for name, _ in gpu_check.SLICES]


def test_slices_fit_the_five_minutes():
    assert sum(s for _, s in gpu_check.SLICES) <= gpu_check.TOTAL_S - 10 <= 290
    assert sum(s for _, s in gpu_check.REHEARSAL_SLICES) <= gpu_check.REHEARSAL_TOTAL_S - 4
    assert [n for n, _ in gpu_check.REHEARSAL_SLICES] == STAGES
    assert all(s <= 540 for _, s in gpu_check.LONG.values())


@pytest.fixture(scope="session")  # once per test process: xdist may interleave modules
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, GPU_CHECK_OUT=str(out),
               # a loaded CI machine must not cut a stage: the slices only bound the
               # stages, which end when their work is done
               GPU_CHECK_TIME_SCALE=os.environ.get("GPU_CHECK_TIME_SCALE", "5"))
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--rehearse"], cwd=str(ROOT),
                       env=env, capture_output=True, text=True, timeout=900)
    return p, out


def test_rehearsal_exits_0_and_every_stage_ran(rehearsal):
    p, out = rehearsal
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["stages"]) == STAGES
    for name, st in res["stages"].items():
        assert st["status"] == "ok", (name, st)
    corr = res["stages"]["correctness"]
    assert corr["smoke"]["run"] == corr["smoke"]["cases"] > 0
    assert res["stages"]["bench"]["targets"], "no target lines"
    assert res["stages"]["tune"]["recommended"] is not None
    assert res["env"]["copy_gbps"] > 0
    # the measured-vs-static section is made (the rehearsal's shapes have no static case)
    summary = (out / "summary.md").read_text()
    assert "## Measured vs static estimate" in summary and "(not made:" not in summary
    assert "| anl_ce | 64 | 256 | | " in summary and "no static case" in summary


def test_rehearsal_covers_every_path(rehearsal):
    _, out = rehearsal
    import tarfile
    with tarfile.open(out / "logs.tar.gz") as tar:
        smoke = json.load(tar.extractfile("smoke.json"))
    from benchmarks.gpu_smoke import PATH_KINDS
    assert {r["path"] for r in smoke} == set(PATH_KINDS)
    for r in smoke:  # a crash (an exception inside a case) is never a numerical mismatch
        assert not any(f.startswith(("NameError", "ImportError", "AttributeError", "TypeError",
                                     "ModuleNotFoundError", "FileNotFoundError")) for f in r["fails"]), r


def test_rehearsal_files_fit_the_device_limits(rehearsal):
    _, out = rehearsal
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= gpu_check.MAX_FILES
    for p in out.rglob("*"):
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel  # at most two folders down
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
    assert {"summary.md", "results.json", "tests.txt", "logs.tar.gz"} <= {p.name for p in files}


def test_rehearsal_prints_the_summary_last(rehearsal):
    p, out = rehearsal
    tail = p.stdout[-12000:]
    summary = (out / "summary.md").read_text()
    assert summary.strip().splitlines()[-1] in tail
    for heading in ("## Targets (issue 19)", "## Failing", "## Cut by the budget"):
        assert heading in tail
    for target in ("80% of copy bandwidth", "1.5x faster than compiled", "6.0x faster than eager",
                   "anl_fl within 15%", "nce_rce within 15%", "Liger", "fused linear ANL-CE"):
        assert target in tail, target  # a target is reported even when it was not measured
