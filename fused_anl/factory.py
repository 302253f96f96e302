"""``get_loss`` by the published configuration names, and the published hyperparameters."""
from __future__ import annotations

from . import _registry as R
from . import modules

# SPEC.md's table. "delta" is ANL's L1 weight: get_loss stores it on the module as
# ``l1_delta`` for the training recipe (fused_anl.recipes); it is not part of the loss.
PRESETS = {
    "mnist": {
        "anl_ce": dict(alpha=1.0, beta=1.0, delta=1e-6),
        "anl_fl": dict(alpha=1.0, beta=1.0, delta=1e-6, gamma=0.5),
        "nce_rce": dict(alpha=1.0, beta=10.0),
        "gce": dict(q=0.7),
        "sce": dict(alpha=0.01, beta=1.0),
        "nce_agce": dict(alpha=0.0, beta=1.0, a=4.0, q=0.2),
    },
    "cifar10": {
        "anl_ce": dict(alpha=5.0, beta=5.0, delta=5e-5),
        "anl_fl": dict(alpha=5.0, beta=5.0, delta=5e-5, gamma=0.5),
        "nce_rce": dict(alpha=1.0, beta=1.0),
        "gce": dict(q=0.7),
        "sce": dict(alpha=0.1, beta=1.0),
        "nce_agce": dict(alpha=1.0, beta=4.0, a=6.0, q=1.5),
    },
    "cifar100": {
        "anl_ce": dict(alpha=10.0, beta=1.0, delta=5e-7),
        "anl_fl": dict(alpha=10.0, beta=1.0, delta=5e-7, gamma=0.5),
        "nce_rce": dict(alpha=10.0, beta=0.1),
        "gce": dict(q=0.7),
        "sce": dict(alpha=6.0, beta=0.1),
        "nce_agce": dict(alpha=10.0, beta=0.1, a=1.8, q=3.0),
    },
    "webvision": {
        "anl_ce": dict(alpha=20.0, beta=1.0, delta=6e-6),
        "anl_fl": dict(alpha=20.0, beta=1.0, delta=6e-6, gamma=0.5),
        "nce_rce": dict(alpha=50.0, beta=0.1),
        "gce": dict(q=0.7),
        "sce": dict(alpha=10.0, beta=1.0),
        "nce_agce": dict(alpha=50.0, beta=0.1, a=2.5, q=3.0),
    },
}

ALIASES = {"min_prob": "p_min"}
LOSS_KEYWORDS = ("reduction", "ignore_index", "weight", "backend", "detach_focal_weight",
                 "process_group", "class_start")


def get_loss(name: str, num_classes: int | None = None, **hyper):
    """The ``nn.Module`` of loss ``name`` with the given hyperparameters.

    Accepts the published configs' keys (``alpha, beta, gamma, q, a, min_prob``,
    ``delta`` for ANL), plus ``reduction, ignore_index, weight, backend,
    detach_focal_weight``. ``num_classes``, when given, is checked against the
    logits at each call.
    """
    if name not in R.LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(R.LOSSES))}")
    spec = R.LOSSES[name]
    hyper = {ALIASES.get(k, k): v for k, v in hyper.items()}
    delta = hyper.pop("delta", 0.0)
    valid = set(spec.hyper) | set(LOSS_KEYWORDS)
    unknown = sorted(set(hyper) - valid)
    if unknown:
        raise ValueError(f"get_loss({name!r}): unknown keys {unknown}; valid keys: "
                         f"{', '.join(sorted(valid | {'delta', 'min_prob'} if 'p_min' in spec.hyper else valid | {'delta'}))}")
    module = getattr(modules, spec.module)(**hyper)
    module.l1_delta = float(delta)
    module.num_classes = num_classes
    if num_classes is not None:
        if num_classes < 2:
            raise ValueError(f"get_loss: num_classes must be >= 2, got {num_classes}")
        module.register_forward_pre_hook(_check_num_classes)
    return module


def _check_num_classes(module, args):
    logits = args[0]
    if logits.dim() >= 2 and logits.shape[1] != module.num_classes:
        raise ValueError(f"{module.loss_name}: logits have {logits.shape[1]} classes, "
                         f"the loss was built for num_classes={module.num_classes}")
