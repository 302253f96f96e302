"""Input validation, modules, get_loss and presets, packaging."""
import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import fused_anl

from conftest import DEVICE

ROOT = Path(__file__).resolve().parent.parent


def _ok():
    return torch.randn(4, 6, device=DEVICE), torch.randint(0, 6, (4,), device=DEVICE)


@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
@pytest.mark.parametrize("case, exc, match", [
    ("int_logits", TypeError, "logits must be float"),
    ("bool_logits", TypeError, "logits must be float"),
    ("float_target", TypeError, "target must hold class indices"),
    ("shape", ValueError, "does not match"),
    ("one_class", ValueError, "at least K=2"),
    ("p_min_zero", ValueError, "p_min must lie in"),
    ("p_min_one", ValueError, "p_min must lie in"),
    ("reduction", ValueError, "reduction must be one of"),
    ("label_high", ValueError, r"labels must lie in \[0, 6\)"),
    ("label_negative", ValueError, r"labels must lie in \[0, 6\)"),
    ("absent_label", ValueError, "absent class"),
    ("weight_shape", ValueError, "weight must have shape"),
    ("one_dim", ValueError, "must have shape"),
    ("unknown_kw", TypeError, "unexpected keyword"),
])
def test_bad_input_raises_a_clear_error(backend, case, exc, match):
    z, t = _ok()
    kw = {}
    if case == "int_logits":
        z = z.long()
    elif case == "bool_logits":
        z = z > 0
    elif case == "float_target":
        t = t.float()
    elif case == "shape":
        t = t[:3]
    elif case == "one_class":
        z, t = z[:, :1], torch.zeros_like(t)
    elif case == "p_min_zero":
        kw["p_min"] = 0.0
    elif case == "p_min_one":
        kw["p_min"] = 1.0
    elif case == "reduction":
        kw["reduction"] = "avg"
    elif case == "label_high":
        t[1] = 6
    elif case == "label_negative":
        t[1] = -1
    elif case == "absent_label":
        z[1, t[1]] = float("-inf")
    elif case == "weight_shape":
        kw["weight"] = torch.ones(5, device=DEVICE)
    elif case == "one_dim":
        z = z[0]
    elif case == "unknown_kw":
        kw["gamma"] = 0.5  # anl_ce has no gamma
    if DEVICE == "cuda" and case in ("label_high", "label_negative", "absent_label"):
        pytest.skip("on CUDA label values are not checked (that would need a device sync)")
    with pytest.raises(exc, match=match):
        fused_anl.anl_ce(z, t, backend=backend, **kw)


def test_unknown_backend_and_triton_on_cpu_without_interpreter(monkeypatch):
    z, t = _ok()
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_anl.anl_ce(z, t, backend="cuda")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            fused_anl.anl_ce(z, t, backend="triton")
        assert fused_anl.functional.resolve_backend("auto", z.device) == "torch"


def test_a_triton_older_than_the_kernels_support(monkeypatch):
    """Triton before MIN_TRITON cannot compile the kernels (3.4 has no
    triton.constexpr_function): backend="triton" says so, "auto" runs the torch backend
    (the same values) and warns once, and the loss matches the torch backend's."""
    import types

    from fused_anl import functional as F

    z, t = _ok()
    where = z.device if DEVICE == "cuda" else torch.device("cpu")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert F.resolve_backend("auto", where) == "triton"  # the installed one is supported
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.4.0"))
    F._warn_old_triton.cache_clear()
    with pytest.raises(ValueError, match=r"Triton 3\.4\.0 is installed, older than 3\.6"):
        fused_anl.anl_ce(z, t, backend="triton")
    with pytest.warns(RuntimeWarning, match=r"Triton 3\.4\.0 .* runs the torch backend"):
        loss = fused_anl.anl_ce(z, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        assert F.resolve_backend("auto", where) == "torch"
    torch.testing.assert_close(loss, fused_anl.anl_ce(z, t, backend="torch"), rtol=0, atol=0)
    monkeypatch.setitem(sys.modules, "triton", None)  # not installed: torch, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert F.resolve_backend("auto", where) == "torch"
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.10.0+git"))
    assert F.resolve_backend("auto", where) == "triton"
    assert F._release("3.10.0+git") == (3, 10) > F.MIN_TRITON


@pytest.mark.parametrize("kw, match", [
    (dict(gamma=-1.0), "gamma must be >= 0"),
])
def test_bad_hyperparameters(kw, match):
    z, t = _ok()
    with pytest.raises(ValueError, match=match):
        fused_anl.anl_fl(z, t, **kw)
    with pytest.raises(ValueError, match="a must be > 1"):
        fused_anl.aul(z, t, a=0.5)
    with pytest.raises(ValueError, match="q must be > 0"):
        fused_anl.gce(z, t, q=0.0)


def test_modules_match_functional_for_every_loss():
    z, t = _ok()
    for name, spec in fused_anl.LOSSES.items():
        module = getattr(fused_anl, spec.module)()
        torch.testing.assert_close(module(z, t), getattr(fused_anl, name)(z, t))
        assert name in repr(module) or spec.module in repr(module)


def test_module_hyperparameters_positional_and_keyword():
    z, t = _ok()
    a = fused_anl.ANLCELoss(5.0, 5.0)(z, t)
    b = fused_anl.anl_ce(z, t, alpha=5.0, beta=5.0)
    torch.testing.assert_close(a, b)
    w = torch.rand(6, device=DEVICE)
    m = fused_anl.NCERCELoss(alpha=1.0, beta=10.0, reduction="sum", weight=w)
    torch.testing.assert_close(m(z, t), fused_anl.reference.nce_rce(z, t, alpha=1.0, beta=10.0,
                                                                      reduction="sum", weight=w))
    assert "weight" in dict(m.named_buffers())


def test_functional_signatures_name_their_keywords():
    sig = inspect.signature(fused_anl.anl_fl)
    for k in ("alpha", "beta", "gamma", "p_min", "reduction", "ignore_index", "weight", "backend",
              "detach_focal_weight"):
        assert k in sig.parameters
    assert sig.parameters["p_min"].default == 1e-7
    assert "detach_focal_weight" not in inspect.signature(fused_anl.anl_ce).parameters


def test_get_loss_published_names_and_presets():
    z, t = _ok()
    for name in ("ce", "fl", "mae", "gce", "sce", "nce_mae", "nce_rce", "nfl_rce", "nce_agce",
                 "nce_aul", "nce_ael", "anl_ce", "anl_fl"):
        assert isinstance(fused_anl.get_loss(name), torch.nn.Module)
    for ds, table in fused_anl.PRESETS.items():
        for name, hyper in table.items():
            loss = fused_anl.get_loss(name, num_classes=6, **hyper)
            assert torch.isfinite(loss(z, t))
    m = fused_anl.get_loss("anl_ce", **fused_anl.PRESETS["cifar10"]["anl_ce"])
    assert m.hyper["alpha"] == 5.0 and m.l1_delta == 5e-5
    m = fused_anl.get_loss("anl_ce", min_prob=1e-5)
    assert m.hyper["p_min"] == 1e-5
    with pytest.raises(ValueError, match="valid names"):
        fused_anl.get_loss("focal")
    with pytest.raises(ValueError, match="valid keys"):
        fused_anl.get_loss("gce", alpha=1.0)
    with pytest.raises(ValueError, match="num_classes=10"):
        fused_anl.get_loss("ce", num_classes=10)(z, t)


def test_hyperparameter_changes_do_not_recompile_or_go_stale():
    z, t = _ok()
    for alpha in (0.5, 2.0, 0.5):
        torch.testing.assert_close(fused_anl.anl_ce(z, t, alpha=alpha),
                                   fused_anl.reference.anl_ce(z, t, alpha=alpha))


def test_kernels_import_from_source_tree_without_install():
    code = ("import fused_anl, fused_anl.kernels.launch as L; "
            "assert L.__file__.endswith('kernels/launch.py'), L.__file__; print('ok')")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
