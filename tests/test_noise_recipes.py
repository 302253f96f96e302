"""Label-noise generators (the recipe of docs/semantics.md), the L1 penalty and the training recipe."""
import numpy as np
import pytest
import torch

import fused_anl
from fused_anl import noise, recipes

# _labels() has 18 to 60 samples per class, where the per-pair floors drop much of the
# noise: the generators' warning about it is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore:(a)?symmetric noise")


def _labels(k=10, per_class=(37, 50, 23, 41, 60, 18, 33, 29, 44, 52), seed=0):
    y = np.concatenate([np.full(n, c) for c, n in zip(range(k), per_class)])
    return np.random.default_rng(seed).permutation(y)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_symmetric_noise_exact_pair_counts(rate):
    y = _labels()
    before = y.copy()
    noisy, flipped = noise.symmetric_noise(y, rate, 10, seed=3)
    assert np.array_equal(y, before), "input must not change"
    assert np.array_equal(flipped, noisy != y)
    for i in range(10):
        n_i = (y == i).sum()
        for j in range(10):
            if i != j:
                assert ((y == i) & (noisy == j)).sum() == np.floor(rate / 9 * n_i + 1e-9)
    assert noise.realized_noise_rate(y, noisy) <= rate
    # each of the 90 (i, j) floors drops less than one sample
    assert noise.realized_noise_rate(y, noisy) > rate - 90 / len(y)


def test_noise_is_seeded_and_keeps_type():
    y = torch.tensor(_labels())
    a, fa = noise.symmetric_noise(y, 0.4, 10, seed=1)
    b, _ = noise.symmetric_noise(y, 0.4, 10, seed=1)
    c, _ = noise.symmetric_noise(y, 0.4, 10, seed=2)
    assert isinstance(a, torch.Tensor) and a.dtype == y.dtype and fa.dtype == torch.bool
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("preset", ["mnist", "cifar10"])
def test_asymmetric_presets(preset):
    y = _labels()
    noisy, flipped = noise.asymmetric_noise(y, 0.4, preset, seed=0, num_classes=10)
    mapping = noise.ASYMMETRIC_MAPPINGS[preset]
    for i in range(10):
        moved = noisy[(y == i) & flipped]
        if i in mapping:
            assert np.all(moved == mapping[i])
            assert len(moved) == np.floor(0.4 * (y == i).sum() + 1e-9)
        else:
            assert len(moved) == 0
    t = noise.noise_transition(y, noisy, 10)
    assert np.allclose(t.sum(1), 1.0)


def test_cifar100_mapping_cycles_within_blocks():
    m = noise.ASYMMETRIC_MAPPINGS["cifar100"]
    assert m[0] == 1 and m[4] == 0 and m[97] == 98 and m[99] == 95


@pytest.mark.parametrize("kw, match", [
    (dict(rate=1.0), "noise rate"), (dict(rate=-0.1), "noise rate"),
])
def test_noise_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        noise.symmetric_noise(_labels(), num_classes=10, **kw)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        noise.symmetric_noise(_labels(), 0.2, 5)
    with pytest.raises(ValueError, match="outside"):
        noise.asymmetric_noise(_labels(), 0.2, {3: 12}, num_classes=10)
    with pytest.raises(ValueError, match="itself"):
        noise.asymmetric_noise(_labels(), 0.2, {3: 3}, num_classes=10)
    with pytest.raises(ValueError, match="unknown mapping"):
        noise.asymmetric_noise(_labels(), 0.2, "imagenet")


def test_l1_penalty_equals_loop_and_has_sign_gradient():
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 3))
    loop = sum(p.abs().sum() for p in model.parameters())
    fast = recipes.l1_penalty(model)
    torch.testing.assert_close(fast, loop)
    fast.backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, torch.sign(p.detach()))
    assert fused_anl.l1_penalty is recipes.l1_penalty


def test_recipe_weight_decay_and_training_step():
    model = torch.nn.Linear(4, 3)
    opt, sched = recipes.make_optimizer(model, "anl_ce", lr=0.1, weight_decay=5e-4, epochs=5)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["momentum"] == 0.9
    opt2, _ = recipes.make_optimizer(model, "ce", lr=0.1, weight_decay=5e-4)
    assert opt2.param_groups[0]["weight_decay"] == 5e-4
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    loss_fn = fused_anl.get_loss("anl_ce", backend="torch")
    before = model.weight.detach().clone()
    recipes.train_one_epoch(model, [(x, y)], loss_fn, opt, l1_delta=1e-3)
    assert not torch.equal(before, model.weight)
    assert 0.0 <= recipes.evaluate(model, [(x, y)]) <= 1.0


def test_noise_rejects_bad_labels_and_mappings():
    with pytest.raises(ValueError, match="integers"):
        noise.symmetric_noise(torch.tensor([0.0, 1.0]), 0.2, 2)
    with pytest.raises(ValueError, match="1-D"):
        noise.symmetric_noise(np.zeros((2, 3), dtype=np.int64), 0.2, 2)
    with pytest.raises(ValueError, match="outside"):  # class count comes from the labels
        noise.asymmetric_noise(_labels(), 0.2, {3: 12})
    same, flipped = noise.asymmetric_noise(_labels(), 0.2, {})
    assert not flipped.any()


def test_l1_penalty_keeps_float64():
    p = [torch.randn(3, dtype=torch.float64, requires_grad=True)]
    assert recipes.l1_penalty(p).dtype == torch.float64


def test_noise_warns_when_per_pair_floor_drops_the_noise():
    y = np.repeat(np.arange(100), 100)  # 100 classes x 100 samples: floor(0.4/99*100) = 0
    with pytest.warns(UserWarning, match=r"symmetric noise: nominal rate 0\.4, realized rate 0\b"):
        noisy, flipped = noise.symmetric_noise(y, 0.4, 100, seed=0)
    assert not flipped.any()
    y = np.repeat(np.arange(10), 3)  # asymmetric: floor(0.2 * 3) = 0 for every mapped class
    with pytest.warns(UserWarning, match=r"asymmetric noise: nominal rate 0\.1, realized rate 0\b"):
        noise.asymmetric_noise(y, 0.2, "mnist", num_classes=10)


def test_noise_is_quiet_when_floor_costs_little():
    import warnings
    y = np.repeat(np.arange(10), 1000)  # floor(0.2/9*1000) = 22 of 22.2: 1% short
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, flipped = noise.symmetric_noise(y, 0.2, 10, seed=0)
        assert flipped.mean() == pytest.approx(0.198)
        noise.asymmetric_noise(y, 0.4, "cifar10", num_classes=10)
        noise.symmetric_noise(y, 0.0, 10)  # no noise asked, none given
