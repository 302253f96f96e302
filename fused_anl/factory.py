"""``get_loss`` by the published configuration names, and the published hyperparameters."""
from __future__ import annotations

from . import _registry as R
from . import modules

# The published hyperparameters. "delta" is ANL's L1 weight: the ANL modules hold it and
# return ``delta * sum |theta|`` from ``regularizer(model)``; it is not part of the loss
# of the logits.
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
    r"""The ``nn.Module`` of loss ``name`` with the given hyperparameters.

    Args:
        name (str): a loss name of the published configurations (``ce``, ``gce``,
            ``sce``, ``nce_rce``, ``anl_ce``, ``anl_fl``, ...; every key of
            ``fused_anl.LOSSES``).
        num_classes (int, optional): when given, checked against the logits at each call.
        **hyper: the published configs' keys (``alpha, beta, gamma, q, a``,
            ``min_prob`` or ``p_min``, and ``delta``, ANL's L1 weight, for ``anl_ce`` and
            ``anl_fl`` only), plus ``reduction, ignore_index, weight, backend,
            detach_focal_weight, process_group, class_start``.

    Returns:
        FusedLoss: the module. For ANL losses, add ``module.regularizer(model)`` to the
        loss: it is the ``delta * sum |theta|`` term of the published recipe.

    Example::

        >>> crit = fused_anl.get_loss("anl_ce", **fused_anl.PRESETS["cifar10"]["anl_ce"])
        >>> crit
        ANLCELoss(alpha=5, beta=5, p_min=1e-07, delta=5e-05)
    """
    if name not in R.LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(R.LOSSES))}")
    spec = R.LOSSES[name]
    hyper = {ALIASES.get(k, k): v for k, v in hyper.items()}
    anl = issubclass(getattr(modules, spec.module), modules.ANLLoss)
    valid = set(spec.hyper) | set(LOSS_KEYWORDS) | ({"delta"} if anl else set())
    unknown = sorted(set(hyper) - valid)
    if "delta" in unknown and not hyper["delta"]:
        hyper.pop("delta")  # delta=0 means "no L1 term", which every loss already has
        unknown.remove("delta")
    if unknown:
        shown = valid | ({"min_prob"} if "p_min" in spec.hyper else set())
        hint = (" (delta is the L1 weight of the ANL losses anl_ce and anl_fl only)"
                if "delta" in unknown else "")
        raise ValueError(f"get_loss({name!r}): unknown keys {unknown}; valid keys: "
                         f"{', '.join(sorted(shown))}{hint}")
    module = getattr(modules, spec.module)(**hyper)
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
