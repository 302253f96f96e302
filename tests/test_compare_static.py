"""benchmarks/compare_static.py: the GPU check's measured times beside the static model,
re-evaluated for the measured device (checked against a hand computation on the
committed Triton 3.6 report)."""
import json
import os

import pytest

from benchmarks import compare_static as CS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(ROOT, "benchmarks", "results", "static-sm90-triton3.6-2026-12-02")


def _results(ms_anl_ce, ms_ce):
    rows = [dict(loss="anl_ce", impl="fused", dtype="bfloat16", n=16384, k=32768, ms=ms_anl_ce,
                 copy_gbps=4300.0),
            dict(loss="anl_ce", impl="eager", dtype="bfloat16", n=16384, k=32768, ms=9.0),
            dict(loss="ce", impl="fused", dtype="bfloat16", n=16384, k=128256, ms=ms_ce),
            dict(loss="anl_ce", impl="fused", dtype="bfloat16", n=64, k=256, ms=0.1),
            dict(loss="anl_fl", impl="fused", dtype="bfloat16", n=16384, k=32768,
                 error="a failed measurement has no ms")]
    return dict(date="2026-12-03",
                env=dict(device="NVIDIA H200", sms=132, triton="3.6.0",
                         driver="580.159.03, 1980 MHz, 3201 MHz"),
                stages=dict(bench=dict(rows=rows, copy_gbps={str(16384 * 32768 * 2): 4400.0})))


def test_estimate_is_the_model_at_the_measured_device():
    with open(os.path.join(STATIC, "roofline.json")) as f:
        static = json.load(f)
    case = {(c["loss"], c["K"]): c for c in static["cases"]}[("anl_ce", 32768)]
    numel = 16384 * 32768
    t_mem = case["go1"]["bytes_per_elem"] * numel / 4300e9
    t_issue = case["go1"]["instr_per_elem"] * numel / (132 * 4 * 32 * 1.98e9)
    want = 1e3 * max(t_mem, t_issue)

    rows = CS.compare(_results(ms_anl_ce=1.1 * want, ms_ce=1.0), static)
    assert [(r["loss"], r["K"]) for r in rows] == [("anl_ce", 32768), ("ce", 128256),
                                                   ("anl_ce", 256)]
    r = rows[0]
    assert r["est_ms"] == pytest.approx(want, rel=1e-12)
    assert r["bound"] == ("memory" if t_mem >= t_issue else "issue")
    assert r["est_ms_if_rereads_miss"] >= r["est_ms"]
    assert r["ratio"] == pytest.approx(1.1) and r["agrees"]
    # ce at K = 128256: no copy figure on the row nor for its bytes, nor in env
    assert rows[1]["note"] == "no copy bandwidth" and rows[2]["note"] == "no static case"
    res = _results(ms_anl_ce=1.0, ms_ce=1.0)
    res["stages"]["bench"]["rows"][0].pop("copy_gbps")  # then by its bytes: 4400 GB/s
    by_bytes = CS.compare(res, static)[0]
    assert by_bytes["est_ms"] == pytest.approx(
        1e3 * max(t_mem * 4300 / 4400, t_issue), rel=1e-12)

    far = CS.compare(_results(ms_anl_ce=1.3 * want, ms_ce=1.0), static)[0]
    assert not far["agrees"] and far["ratio"] == pytest.approx(1.3)


def test_command_writes_the_table(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(_results(ms_anl_ce=0.5, ms_ce=1.0)))
    assert CS.main([str(tmp_path), "--static", STATIC, "--out", str(tmp_path / "c.md")]) == 0
    text = (tmp_path / "c.md").read_text()
    assert text == capsys.readouterr().out
    assert "NVIDIA H200" in text and "1.980 GHz" in text and "Different releases" not in text
    assert "| anl_ce | 16384 | 32768 | persistent | 0.500 |" in text
    assert "no static case" in text
