"""The README's main job, quick variant: ANL-CE must keep its accuracy where CE collapses."""
import csv

import fused_anl.__main__
from fused_anl.__main__ import main


def test_quick_demo_shows_anl_robustness(tmp_path, capsys):
    # the two losses the assertions compare (the quick run of all seven takes minutes)
    assert main(["demo", "--quick", "--losses", "ce,anl_ce", "--backend", "torch",
                 "--out", str(tmp_path)]) == 0
    for f in ("results.md", "results.csv", "results.json", "results.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    acc = {}
    with open(tmp_path / "results.csv") as f:
        for row in csv.DictReader(f):
            acc.setdefault((row["loss"], row["noise"]), []).append(float(row["test_accuracy"]))
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    # Observed when this test was written (2 seeds, 150 epochs): CE ~52%, ANL-CE ~88% at 0.6
    # symmetric noise; clean accuracy ~97% for both. The thresholds sit well below that.
    assert mean[("anl_ce", "sym")] > mean[("ce", "sym")] + 20
    assert mean[("ce", "clean")] > 90 and mean[("anl_ce", "clean")] > 90
    assert "ANL-CE" in capsys.readouterr().out


# --- the command line: every option checked before any work, argparse's exit status 2 ---

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import fused_anl  # noqa: E402
from fused_anl import demo  # noqa: E402


@pytest.fixture
def no_training(monkeypatch):
    """Any training or data loading fails the test: validation must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the options were validated")
    monkeypatch.setattr(demo, "load_dataset", forbidden)
    monkeypatch.setattr(demo, "train_run", forbidden)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds: must be >= 1, got 0"),
    (["--quick", "--seeds", "0"], "--seeds: must be >= 1"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--threads", "0"], "--threads: must be >= 1"),
    (["--noise", "pair:0.2"], "noise kind 'pair'"),
    (["--noise", "bogus"], "unknown noise setting 'bogus'"),
    (["--noise", "sym:abc"], "is not a number"),
    (["--noise", "sym:1.0"], "must lie in (0, 1)"),
    (["--noise", "clean,"], "unknown noise setting ''"),
    (["--losses", "ce,focal"], "no demo preset for 'focal'"),
    (["--device", "tpu"], "--device: 'tpu'"),
    (["--backend", "cuda"], "invalid choice"),
    (["--dataset", "cifar10"], "invalid choice"),
])
def test_bad_options_exit_2_with_one_line_error(argv, message, no_training, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--out", str(tmp_path)] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fused-anl demo: error: ") and message in err[-1], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_refused(no_training, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--device", "cuda", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_triton_without_triton_is_refused(no_training, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now fails
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--backend", "triton", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "Triton is not installed" in capsys.readouterr().err


def test_triton_too_old_is_refused(no_training, capsys, monkeypatch, tmp_path):
    import types

    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.4.0"))
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--backend", "triton", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "Triton 3.4.0 is installed, older than 3.6" in capsys.readouterr().err


def test_triton_on_cpu_without_interpreter_is_refused(no_training, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device makes --backend triton valid")
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--backend", "triton", "--device", "cpu",
                                 "--out", str(tmp_path)])
    assert e.value.code == 2 and "need a CUDA device" in capsys.readouterr().err


def test_help_is_complete_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Writes OUT/results.{md,csv,json,png} and prints the accuracy table." in out
    assert "(default: 150)" in out and "(default: 1)" in out and "--version" in out
    with pytest.raises(SystemExit) as e:
        fused_anl.__main__.main(["demo", "--version"])
    assert e.value.code == 0 and fused_anl.__version__ in capsys.readouterr().out
    assert fused_anl.__main__.main(["--version"]) == 0
    assert fused_anl.__version__ in capsys.readouterr().out
    assert fused_anl.__main__.main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert fused_anl.__main__.main([]) == 2
    assert fused_anl.__main__.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err


def test_cli_process_exit_status():
    r = subprocess.run([sys.executable, "-m", "fused_anl", "demo", "--seeds", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "fused-anl demo: error: argument --seeds: must be >= 1, got 0"), r.stderr


def test_noise_settings_parse():
    assert demo.settings("clean,sym:0.6,asym:0.2") == [("clean", 0.0), ("sym", 0.6), ("asym", 0.2)]
    assert demo.settings("sym") == [("sym", r) for r in demo.SYMMETRIC]
    assert demo.settings("sym,sym:0.2") == [("sym", r) for r in demo.SYMMETRIC]  # no repeats


def test_demo_restores_thread_count(monkeypatch, tmp_path):
    seen = {}

    def fake(args):
        seen["threads"] = torch.get_num_threads()
        return {}
    monkeypatch.setattr(demo, "_run", fake)
    before = torch.get_num_threads()
    assert demo.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert seen["threads"] == 1 and torch.get_num_threads() == before
