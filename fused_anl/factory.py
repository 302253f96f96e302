"""``get_loss`` by the published configuration names, and the published hyperparameters."""
from __future__ import annotations

from . import _registry as R
from . import modules

# The published hyperparameters: the paper's table (anl_ce, anl_fl, nce_rce, gce, sce,
# nce_agce) and, for the other losses, the published configuration files (config/*.json of
# the authors' code; WebVision has files only for the table's losses); JAL-CE and JAL-FL
# (nce_amse, nfl_amse) from the JAL code's config.py (NCEandAMSE, NFLandAMSE; gamma is its
# NFL default, 0.5). The ANL table and files agree except
# webvision_anl_ce.json's delta, 5e-6 where the table has 6e-6 (tests/test_configs.py).
# "delta" is ANL's L1 weight: the ANL modules hold it and return ``delta * sum |theta|``
# from ``regularizer(model)``; it is not part of the loss of the logits.
PRESETS = {
    "mnist": {
        "anl_ce": dict(alpha=1.0, beta=1.0, delta=1e-6),
        "anl_fl": dict(alpha=1.0, beta=1.0, delta=1e-6, gamma=0.5),
        "nce_rce": dict(alpha=1.0, beta=10.0),
        "gce": dict(q=0.7),
        "sce": dict(alpha=0.01, beta=1.0),
        "nce_agce": dict(alpha=0.0, beta=1.0, a=4.0, q=0.2),
        "fl": dict(gamma=0.5),
        "nce_mae": dict(alpha=1.0, beta=10.0),
        "nfl_rce": dict(alpha=1.0, beta=10.0, gamma=0.5),
        "nce_aul": dict(alpha=0.0, beta=1.0, a=3.0, q=0.1),
        "nce_ael": dict(alpha=0.0, beta=1.0, a=3.5),
    },
    "cifar10": {
        "anl_ce": dict(alpha=5.0, beta=5.0, delta=5e-5),
        "anl_fl": dict(alpha=5.0, beta=5.0, delta=5e-5, gamma=0.5),
        "nce_rce": dict(alpha=1.0, beta=1.0),
        "gce": dict(q=0.7),
        "sce": dict(alpha=0.1, beta=1.0),
        "nce_agce": dict(alpha=1.0, beta=4.0, a=6.0, q=1.5),
        "fl": dict(gamma=0.5),
        "nce_mae": dict(alpha=1.0, beta=1.0),
        "nfl_rce": dict(alpha=1.0, beta=1.0, gamma=0.5),
        "nce_aul": dict(alpha=1.0, beta=4.0, a=6.3, q=1.5),
        "nce_ael": dict(alpha=1.0, beta=4.0, a=5.0),
        "nce_amse": dict(alpha=1.0, beta=1.0, a=30.0),
        "nfl_amse": dict(alpha=1.0, beta=1.0, gamma=0.5, a=30.0),
        "anl_ce_er": dict(alpha=5.0, beta=5.0, delta=5e-5, lamb=2.0),
    },
    "cifar100": {
        "anl_ce": dict(alpha=10.0, beta=1.0, delta=5e-7),
        "anl_fl": dict(alpha=10.0, beta=1.0, delta=5e-7, gamma=0.5),
        "nce_rce": dict(alpha=10.0, beta=0.1),
        "gce": dict(q=0.7),
        "sce": dict(alpha=6.0, beta=0.1),
        "nce_agce": dict(alpha=10.0, beta=0.1, a=1.8, q=3.0),
        "fl": dict(gamma=0.5),
        "nce_mae": dict(alpha=10.0, beta=0.1),
        "nfl_rce": dict(alpha=10.0, beta=0.1, gamma=0.5),
        "nce_aul": dict(alpha=10.0, beta=0.015, a=6.0, q=3.0),
        "nce_ael": dict(alpha=10.0, beta=0.1, a=1.5),
        "nce_amse": dict(alpha=5.0, beta=1.0, a=20.0),
        "nfl_amse": dict(alpha=5.0, beta=1.0, gamma=0.5, a=20.0),
        "anl_ce_er": dict(alpha=10.0, beta=1.0, delta=5e-7, lamb=0.01),
    },
    "webvision": {
        "anl_ce": dict(alpha=20.0, beta=1.0, delta=6e-6),
        "anl_fl": dict(alpha=20.0, beta=1.0, delta=6e-6, gamma=0.5),
        "nce_rce": dict(alpha=50.0, beta=0.1),
        "gce": dict(q=0.7),
        "sce": dict(alpha=10.0, beta=1.0),
        "nce_agce": dict(alpha=50.0, beta=0.1, a=2.5, q=3.0),
        "nce_amse": dict(alpha=50.0, beta=1.0, a=30.0),
        "nfl_amse": dict(alpha=50.0, beta=1.0, gamma=0.5, a=30.0),
    },
    # Joint Asymmetric Loss (JAL, ICCV 2025) only: its config.py's Clothing1M setting
    "clothing1m": {
        "nce_amse": dict(alpha=5.0, beta=0.1, a=5.0),
        "nfl_amse": dict(alpha=5.0, beta=0.1, gamma=0.5, a=5.0),
    },
}

ALIASES = {"min_prob": "p_min"}
LOSS_KEYWORDS = ("reduction", "ignore_index", "weight", "backend", "detach_focal_weight",
                 "process_group", "class_start")
# Keys of the published configuration files that carry no meaning for the loss of the
# logits, accepted for the losses whose published files hold them and nowhere else.
# ``is_anl: true`` tells the published trainer to call ``loss(logits, labels, model)``,
# which adds the L1 term; here the ANL modules always hold ``delta`` and return the term
# from ``regularizer(model)``, so the flag only has to be true.
PUBLISHED_FLAGS = {"is_anl": ("anl_ce", "anl_fl")}


def _anl_names():
    return sorted(n for n in R.public_names()
                  if issubclass(getattr(modules, R.spec_of(n).module), modules.ANLLoss))


def get_loss(name: str, num_classes: int | None = None, **hyper):
    r"""The ``nn.Module`` of loss ``name`` with the given hyperparameters.

    Takes the ``loss`` section of a published configuration file as written::

        get_loss(**cfg["loss"], num_classes=cfg["dataset"]["num_classes"])

    Args:
        name (str): a loss name of the published configurations (``ce``, ``gce``,
            ``sce``, ``nce_rce``, ``anl_ce``, ``anl_fl``, ...; every key of
            ``fused_anl.LOSSES``).
        num_classes (int, optional): when given, checked against the logits at each call.
        **hyper: the published configs' keys: ``alpha, beta, gamma, q, a``, ``min_prob``
            (or its name here, ``p_min``; not both), ``delta`` (ANL's L1 weight; only
            for the ANL losses, or 0), and ``is_anl`` (only for ``anl_ce`` and
            ``anl_fl``, whose published files have it, and only ``True``: the published
            trainer's switch for the L1 term, which these modules always hold); plus
            ``reduction, ignore_index, weight, backend, detach_focal_weight,
            process_group, class_start``. Any other key is an error that lists the
            valid ones.

    Returns:
        FusedLoss: the module. For ANL losses, add ``module.regularizer(model)`` to the
        loss: it is the ``delta * sum |theta|`` term of the published recipe
        (:func:`fused_anl.from_config` returns a recipe whose ``loss`` adds it).

    Raises:
        ValueError: an unknown loss name, an unknown key (the message lists the valid
            keys), both ``min_prob`` and ``p_min``, ``is_anl`` other than ``True``.

    Example::

        >>> crit = fused_anl.get_loss("anl_ce", **fused_anl.PRESETS["cifar10"]["anl_ce"])
        >>> crit
        ANLCELoss(alpha=5, beta=5, p_min=1e-07, delta=5e-05)
        >>> fused_anl.get_loss(name="anl_ce", alpha=5.0, beta=5.0, delta=5e-5,
        ...                    min_prob=1e-7, is_anl=True, num_classes=10)
        ANLCELoss(alpha=5, beta=5, p_min=1e-07, delta=5e-05, num_classes=10)
    """
    if name not in R.public_names():
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(R.public_names())}")
    spec = R.spec_of(name)
    flags = {k: hyper.pop(k) for k in list(hyper)
             if k in PUBLISHED_FLAGS and name in PUBLISHED_FLAGS[k]}
    if "is_anl" in flags and flags["is_anl"] is not True:
        raise ValueError(
            f"get_loss({name!r}): is_anl={flags['is_anl']!r}; the published files have "
            f"is_anl=true for {name} (their trainer then adds the L1 term). Give delta=0 "
            f"to train without the L1 term.")
    for alias, key in ALIASES.items():
        if alias in hyper and key in hyper:
            raise ValueError(f"get_loss({name!r}): both {alias}={hyper[alias]!r} and "
                             f"{key}={hyper[key]!r} given; they are the same parameter")
    hyper = {ALIASES.get(k, k): v for k, v in hyper.items()}
    anl_names = _anl_names()
    anl = name in anl_names
    valid = (set(spec.hyper) | set(LOSS_KEYWORDS) | ({"delta"} if anl else set())
             | (set() if name in R.BATCH_LOSSES else {"z_loss", "logit_softcap"})
             | ({"label_smoothing"} if name == "ce" else set()))
    unknown = sorted(set(hyper) - valid)
    if "delta" in unknown and not hyper["delta"]:
        hyper.pop("delta")  # delta=0 means "no L1 term", which every loss already has
        unknown.remove("delta")
    if unknown:
        shown = (valid | ({"min_prob"} if "p_min" in spec.hyper else set())
                 | {k for k, names in PUBLISHED_FLAGS.items() if name in names})
        hint = ""
        if "delta" in unknown:
            listed = " and ".join([", ".join(anl_names[:-1]), anl_names[-1]]
                                  if len(anl_names) > 1 else anl_names)
            hint = f" (delta is the L1 weight of the ANL losses {listed} only)"
        elif any(k in PUBLISHED_FLAGS for k in unknown):
            hint = "".join(f" ({k} is a key of the published files of {' and '.join(v)} only)"
                           for k, v in PUBLISHED_FLAGS.items() if k in unknown)
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
