"""The loss modules: ANL's L1 term (delta, regularizer, the warning when it is left out),
and reprs that show every setting that is not the default."""
import warnings

import pytest
import torch

import fused_anl
from fused_anl import recipes


def _batch(n=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randint(0, k, (n,), generator=g)


def _model(k=5):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, k))


@pytest.mark.parametrize("cls", [fused_anl.ANLCELoss, fused_anl.ANLFLLoss])
def test_anl_modules_take_delta_and_regularizer_is_published_l1(cls):
    model = _model()
    crit = cls(alpha=5.0, beta=5.0, delta=5e-5, backend="torch")
    assert crit.delta == 5e-5 and crit.l1_delta == 5e-5
    assert "delta=5e-05" in repr(crit)
    reg = crit.regularizer(model)
    # the published code: delta * sum(p.abs().sum() for p in model.parameters())
    expected = 5e-5 * sum(p.abs().sum() for p in model.parameters())
    torch.testing.assert_close(reg, expected)
    reg.backward()
    for p in model.parameters():  # every parameter, biases and the norm layer included
        torch.testing.assert_close(p.grad, 5e-5 * torch.sign(p.detach()))
    # the loss of the logits itself is unchanged by delta
    x, y = _batch()
    z = model(x).detach()
    torch.testing.assert_close(crit(z, y), cls(alpha=5.0, beta=5.0, backend="torch")(z, y))


def test_get_loss_passes_the_published_delta():
    crit = fused_anl.get_loss("anl_ce", **fused_anl.PRESETS["cifar10"]["anl_ce"])
    assert isinstance(crit, fused_anl.ANLCELoss) and crit.delta == 5e-5
    assert repr(crit) == "ANLCELoss(alpha=5, beta=5, p_min=1e-07, delta=5e-05)"
    fl = fused_anl.get_loss("anl_fl", **fused_anl.PRESETS["mnist"]["anl_fl"])
    assert fl.delta == 1e-6 and "delta=1e-06" in repr(fl)


def test_delta_is_refused_where_it_means_nothing():
    with pytest.raises(TypeError, match="L1 weight of the ANL losses"):
        fused_anl.CELoss(delta=1e-5)
    with pytest.raises(ValueError, match="anl_ce, anl_ce_er and anl_fl only"):
        fused_anl.get_loss("nce_rce", delta=1e-5)
    assert fused_anl.get_loss("gce", delta=0).delta == 0.0  # "no L1 term" is fine anywhere
    with pytest.raises(ValueError, match=">= 0"):
        fused_anl.ANLCELoss(delta=-1.0)
    with pytest.raises(TypeError, match="number"):
        fused_anl.ANLCELoss(delta="5e-5")


def test_regularizer_is_zero_for_other_losses_and_delta_zero():
    model = _model()
    for crit in (fused_anl.CELoss(), fused_anl.ANLCELoss()):
        r = crit.regularizer(model)
        assert r.shape == () and float(r) == 0.0


def _train(crit, model, steps=3, use_regularizer=False, regularizer_first=False):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(steps):
        x, y = _batch(seed=step)
        if use_regularizer and regularizer_first:
            reg = crit.regularizer(model)
            loss = crit(model(x), y) + reg
        elif use_regularizer:
            loss = crit(model(x), y) + crit.regularizer(model)
        else:
            loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_warns_once_when_l1_term_is_left_out():
    crit = fused_anl.ANLCELoss(delta=1e-4, backend="torch")
    with pytest.warns(UserWarning, match=r"delta=0\.0001.*regularizer\(model\)") as rec:
        _train(crit, _model(), steps=4)
    assert sum("regularizer" in str(w.message) for w in rec) == 1


@pytest.mark.parametrize("first", [False, True])
def test_no_warning_when_regularizer_is_used_or_not_needed(first):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(fused_anl.ANLCELoss(delta=1e-4, backend="torch"), _model(), use_regularizer=True,
               regularizer_first=first)
        _train(fused_anl.ANLCELoss(backend="torch"), _model())  # delta = 0: nothing to add
        crit = fused_anl.ANLFLLoss(delta=1e-4, backend="torch")
        model = _model()
        x, y = _batch()
        with torch.no_grad():  # evaluation is not training
            for _ in range(3):
                crit(model(x), y)
        # the recipe's epoch asks for the module's term (l1_delta=None), or takes the
        # caller's explicit weight
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        recipes.train_one_epoch(model, [_batch(seed=s) for s in range(3)], crit, opt)
        crit2 = fused_anl.ANLCELoss(delta=1e-4, backend="torch")
        recipes.train_one_epoch(model, [_batch(seed=s) for s in range(3)], crit2, opt,
                                l1_delta=0.0)


def test_recipe_epoch_adds_the_module_term():
    model = _model()
    crit = fused_anl.ANLCELoss(delta=0.5, backend="torch")
    x, y = _batch()
    with torch.no_grad():
        expected = float(crit(model(x), y) + 0.5 * recipes.l1_penalty(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = recipes.train_one_epoch(model, [(x, y)], crit, opt)
    assert got == pytest.approx(expected, rel=1e-6)


def test_reprs_show_every_non_default_setting():
    assert repr(fused_anl.CELoss()) == "CELoss()"
    assert repr(fused_anl.GCELoss()) == "GCELoss(q=0.7)"
    m = fused_anl.NCERCELoss(alpha=2.0, reduction="sum", ignore_index=0, weight=torch.ones(5),
                             backend="torch")
    r = repr(m)
    for s in ("alpha=2", "beta=1", "reduction='sum'", "ignore_index=0",
              "weight=<tensor of 5 class weights>", "backend='torch'"):
        assert s in r, (s, r)
    r = repr(fused_anl.ANLFLLoss(detach_focal_weight=False))
    assert "detach_focal_weight=False" in r and "delta=0" in r
    assert "num_classes=7" in repr(fused_anl.get_loss("ce", num_classes=7))
    assert "ignore_index" not in repr(fused_anl.CELoss(ignore_index=-100))


def test_linear_module_reprs_name_loss_and_hyperparameters():
    r = repr(fused_anl.LinearLoss("nce_rce"))
    assert "nce_rce" in r and "alpha=1" in r and "beta=1" in r
    r = repr(fused_anl.LinearANLCELoss(alpha=5.0, chunk_size=64))
    assert "anl_ce" in r and "alpha=5" in r and "beta=1" in r and "p_min=1e-07" in r
    assert "chunk_size=64" in r
