"""A configuration file of the published code as a training recipe: :func:`from_config`.

The authors' repository (Virusdoll/Active-Negative-Loss) trains every experiment from a
JSON file with four sections::

    {"model":   {"name": "toymodel8l"},
     "loss":    {"name": "anl_ce", "alpha": 5.0, "beta": 5.0, "delta": 5e-5,
                 "min_prob": 1e-7, "is_anl": true},
     "dataset": {"name": "cifar10", "num_classes": 10, "train_batchsize": 128,
                 "test_batchsize": 256, "num_workers": 4},
     "optim":   {"total_epoch": 120, "optimizer": "sgd", "learning_rate": 0.01,
                 "momentum": 0.9, "weight_decay": 0, "grad_bound": 5.0,
                 "scheduler": "cosine", "T_max": 120, "eta_min": 0}}

and its trainer does, per batch, ``loss = loss_function(logits, labels, model)`` for
the ANL losses (``alpha * active + beta * negative + delta * sum |theta|`` over every
parameter), ``loss_function(logits, labels)`` for the others, then ``backward``,
``clip_grad_norm_(model.parameters(), grad_bound)`` and ``optimizer.step()``; the
scheduler steps once per epoch, after the epoch's batches. :class:`Recipe` holds the
same pieces, with the fused loss as criterion.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

import torch

from .factory import LOSS_KEYWORDS, get_loss

# The keys each section of a published file may hold: required, then optional.
_SECTIONS = {
    "dataset": (("name", "num_classes", "train_batchsize", "test_batchsize", "num_workers"),
                ("train_data_path", "val_data_path")),
    "optim": (("total_epoch", "optimizer", "learning_rate", "momentum", "weight_decay",
               "grad_bound", "scheduler"), ("nesterov",)),  # + the scheduler's keys
    "model": (("name",), ()),
}
_REQUIRED_SECTIONS = ("loss", "dataset", "optim")
OPTIMIZERS = ("sgd",)
# scheduler name -> its keys in the optim section (all required)
SCHEDULERS = {"cosine": ("T_max", "eta_min"), "steplr": ("step_size", "gamma")}


@dataclass(frozen=True, eq=False)
class Recipe:
    r"""The training recipe of one published configuration file.

    Made by :func:`from_config`; every field is a value of the file (the criterion is
    built from its ``loss`` section). The published trainer's loop, with it::

        recipe = fused_anl.from_config("config/cifar10_anl_ce.json")
        optimizer = recipe.make_optimizer(model)
        scheduler = recipe.make_scheduler(optimizer)
        for epoch in range(recipe.epochs):
            for x, y in loader:                        # batches of recipe.train_batch_size
                loss = recipe.loss(model(x), y, model)  # criterion + delta * sum |theta|
                optimizer.zero_grad()
                loss.backward()
                recipe.clip_grad_norm_(model)          # at recipe.grad_bound
                optimizer.step()
            scheduler.step()                           # once per epoch

    Attributes:
        criterion (FusedLoss): the fused loss of the ``loss`` section
            (``get_loss(**cfg["loss"], num_classes=...)``). For ANL losses it holds the
            L1 weight ``delta``; :meth:`loss` adds its ``regularizer(model)``.
        loss_name (str): ``loss.name`` as written in the file.
        dataset (str): ``dataset.name`` (``mnist``, ``cifar10``, ``cifar100``,
            ``webvision`` in the published files).
        num_classes (int): ``dataset.num_classes``.
        model_name (str, optional): ``model.name`` (the published code's network, e.g.
            ``toymodel8l``, ``resnet34``); ``None`` without a ``model`` section. The
            recipe does not build the model.
        epochs (int): ``optim.total_epoch``.
        train_batch_size (int): ``dataset.train_batchsize``.
        test_batch_size (int): ``dataset.test_batchsize``.
        num_workers (int): ``dataset.num_workers`` (the published data loaders').
        grad_bound (float): ``optim.grad_bound``, the bound of the gradient's total
            2-norm (``torch.nn.utils.clip_grad_norm_``).
        optimizer (str): ``optim.optimizer`` (``sgd``).
        lr (float): ``optim.learning_rate``.
        momentum (float): ``optim.momentum``.
        weight_decay (float): ``optim.weight_decay`` (0 in the files of ANL losses,
            which use the L1 term instead).
        nesterov (bool): ``optim.nesterov``, ``False`` where the file has none.
        scheduler (str): ``optim.scheduler``: ``cosine`` (``CosineAnnealingLR``) or
            ``steplr`` (``StepLR``).
        scheduler_args (Mapping[str, float]): the scheduler's keys of the ``optim``
            section: ``T_max, eta_min`` for ``cosine``, ``step_size, gamma`` for
            ``steplr``.
        config (Mapping[str, Any]): a copy of the whole file, read-only at the top level.
    """

    criterion: torch.nn.Module
    loss_name: str
    dataset: str
    num_classes: int
    model_name: Optional[str]
    epochs: int
    train_batch_size: int
    test_batch_size: int
    num_workers: int
    grad_bound: float
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    scheduler: str
    scheduler_args: Mapping[str, float]
    config: Mapping[str, Any] = field(repr=False)

    @property
    def delta(self) -> float:
        """ANL's L1 weight (``loss.delta`` of the file; 0 for the other losses)."""
        return float(getattr(self.criterion, "delta", 0.0))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, model) -> torch.Tensor:
        r"""The published training loss: ``criterion(logits, labels) +
        criterion.regularizer(model)``.

        For the ANL losses this is the published ``forward(pred, labels, model)``,
        ``alpha * active + beta * negative + delta * sum |theta|`` with the sum over
        every parameter of ``model`` (biases and norm layers included); for the other
        losses the regularizer is an exact zero and this is ``criterion(logits, labels)``.

        Args:
            logits (Tensor): ``(N, num_classes)`` (or ``(N, num_classes, d1, ...)``).
            labels (Tensor): ``(N,)`` (or ``(N, d1, ...)``) class indices.
            model (nn.Module or iterable of Tensors): the parameters of the L1 term.

        Returns:
            Tensor: a differentiable scalar (with the criterion's default
            ``reduction="mean"``).
        """
        return self.criterion(logits, labels) + self.criterion.regularizer(model)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        r"""The file's optimizer: ``torch.optim.SGD(params, lr, momentum,
        weight_decay, nesterov)``, as the published code builds it.

        Args:
            params (nn.Module or iterable): a model (its ``parameters()``), or what
                ``torch.optim.SGD`` takes (parameters or parameter groups).
        """
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, nesterov=self.nesterov)

    def make_scheduler(self, optimizer: torch.optim.Optimizer):
        r"""The file's learning-rate schedule, stepped once per epoch after the epoch's
        batches: ``CosineAnnealingLR(optimizer, T_max, eta_min)`` for ``cosine``,
        ``StepLR(optimizer, step_size, gamma)`` for ``steplr``."""
        if self.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=self.scheduler_args["T_max"],
                eta_min=self.scheduler_args["eta_min"])
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.scheduler_args["step_size"],
            gamma=self.scheduler_args["gamma"])

    def clip_grad_norm_(self, model) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_(model.parameters(), grad_bound)``: returns
        the total norm before clipping. ``model``: a module or an iterable of tensors."""
        params = model.parameters() if isinstance(model, torch.nn.Module) else model
        return torch.nn.utils.clip_grad_norm_(params, self.grad_bound)


def _err(where, msg):
    return ValueError(f"from_config: {where}: {msg}")


def _check_keys(where, cfg, required, optional=()):
    missing = [k for k in required if k not in cfg]
    unknown = sorted(set(cfg) - set(required) - set(optional))
    if missing or unknown:
        parts = ([f"missing keys {missing}"] if missing else []) + (
            [f"unknown keys {unknown}"] if unknown else [])
        raise _err(where, "; ".join(parts) + "; valid keys: "
                   + ", ".join(sorted(set(required) | set(optional))))


def _int(where, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(where, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _float(where, value, minimum=0.0, strict=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(where, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise _err(where, f"must be finite and {'>' if strict else '>='} {minimum:g}, "
                          f"got {value!r}")
    return value


def _name(where, value, valid=None):
    if not isinstance(value, str):
        raise _err(where, f"must be a string, got {value!r}")
    if valid is not None and value not in valid:
        raise _err(where, f"{value!r} is not one of {', '.join(valid)}")
    return value


def from_config(config, **loss_options) -> Recipe:
    r"""The training recipe of a published configuration file, as it is written.

    Reads the four sections of the authors' files (``model``, ``loss``, ``dataset``,
    ``optim``; see :mod:`fused_anl.recipe`; ``model`` may be left out, the recipe does
    not build the network) and builds the fused criterion with
    ``get_loss(**cfg["loss"], num_classes=cfg["dataset"]["num_classes"])``.

    Args:
        config (str, os.PathLike or Mapping): a JSON file's path, or its contents as a
            dict. A dict is copied, not kept.
        **loss_options: settings of the criterion that the files do not hold
            (``backend``, ``reduction``, ``ignore_index``, ``weight``,
            ``detach_focal_weight``, ``process_group``, ``class_start``); passed on to
            :func:`get_loss`.

    Returns:
        Recipe: the criterion, ``loss(logits, labels, model)`` (criterion plus ANL's
        L1 term), ``make_optimizer``, ``make_scheduler``, ``clip_grad_norm_`` and the
        file's epochs, batch sizes, dataset name and number of classes.

    Raises:
        ValueError: a missing section or key, an unknown one (misspelled: the message
            lists the valid keys), a value of the wrong type or range, an optimizer
            other than ``sgd``, a scheduler other than ``cosine`` or ``steplr``, or a
            key of the other scheduler.
        TypeError: ``config`` is neither a path nor a mapping.

    Example::

        >>> recipe = fused_anl.from_config("config/cifar10_anl_ce.json")
        >>> recipe.criterion
        ANLCELoss(alpha=5, beta=5, p_min=1e-07, delta=5e-05, num_classes=10)
        >>> recipe.epochs, recipe.train_batch_size, recipe.grad_bound
        (120, 128, 5.0)
    """
    if isinstance(config, (str, os.PathLike)):
        with open(config) as f:
            cfg = json.load(f)
    elif isinstance(config, Mapping):
        cfg = copy.deepcopy(dict(config))
    else:
        raise TypeError(f"from_config: expected a path or a mapping, got "
                        f"{type(config).__name__}")
    if not isinstance(cfg, Mapping):
        raise _err("the file", f"must hold a JSON object, got {type(cfg).__name__}")
    _check_keys("top level", cfg, _REQUIRED_SECTIONS, ("model",))
    for section in cfg:
        if not isinstance(cfg[section], Mapping):
            raise _err(f"section {section!r}", f"must be an object, got {cfg[section]!r}")
    for section in ("model", "dataset"):
        if section in cfg:
            _check_keys(f"section {section!r}", cfg[section], *_SECTIONS[section])

    model_name = _name("model.name", cfg["model"]["name"]) if "model" in cfg else None

    ds = cfg["dataset"]
    num_classes = _int("dataset.num_classes", ds["num_classes"], 2)

    opt = cfg["optim"]
    every_scheduler_key = tuple(k for keys in SCHEDULERS.values() for k in keys)
    _check_keys("section 'optim'", opt, _SECTIONS["optim"][0],
                _SECTIONS["optim"][1] + every_scheduler_key)
    optimizer = _name("optim.optimizer", opt["optimizer"], OPTIMIZERS)
    scheduler = _name("optim.scheduler", opt["scheduler"], tuple(SCHEDULERS))
    sched_keys = SCHEDULERS[scheduler]
    foreign = sorted(k for name, keys in SCHEDULERS.items() if name != scheduler
                     for k in keys if k in opt and k not in sched_keys)
    if foreign:
        raise _err("section 'optim'", f"{foreign} belong to another scheduler than "
                                      f"{scheduler!r}, which takes {', '.join(sched_keys)}")
    _check_keys("section 'optim'", opt, _SECTIONS["optim"][0] + sched_keys, _SECTIONS["optim"][1])
    if scheduler == "cosine":
        scheduler_args = {"T_max": _int("optim.T_max", opt["T_max"], 1),
                          "eta_min": _float("optim.eta_min", opt["eta_min"])}
    else:
        scheduler_args = {"step_size": _int("optim.step_size", opt["step_size"], 1),
                          "gamma": _float("optim.gamma", opt["gamma"], strict=True)}
    nesterov = opt.get("nesterov", False)
    if not isinstance(nesterov, bool):
        raise _err("optim.nesterov", f"must be true or false, got {nesterov!r}")

    loss_cfg = dict(cfg["loss"])
    if "name" not in loss_cfg:
        raise _err("section 'loss'", "missing key 'name'")
    given = sorted(set(loss_options) & set(loss_cfg))
    if given:
        raise _err("loss_options", f"{given} are already in the file's loss section")
    bad = sorted(set(loss_options) - set(LOSS_KEYWORDS))
    if bad:
        raise _err("loss_options", f"unknown {bad}; valid: {', '.join(LOSS_KEYWORDS)} "
                                   f"(the loss's own keys belong in the file)")
    criterion = get_loss(**loss_cfg, num_classes=num_classes, **loss_options)

    return Recipe(
        criterion=criterion,
        loss_name=loss_cfg["name"],
        dataset=_name("dataset.name", ds["name"]),
        num_classes=num_classes,
        model_name=model_name,
        epochs=_int("optim.total_epoch", opt["total_epoch"], 1),
        train_batch_size=_int("dataset.train_batchsize", ds["train_batchsize"], 1),
        test_batch_size=_int("dataset.test_batchsize", ds["test_batchsize"], 1),
        num_workers=_int("dataset.num_workers", ds["num_workers"], 0),
        grad_bound=_float("optim.grad_bound", opt["grad_bound"], strict=True),
        optimizer=optimizer,
        lr=_float("optim.learning_rate", opt["learning_rate"], strict=True),
        momentum=_float("optim.momentum", opt["momentum"]),
        weight_decay=_float("optim.weight_decay", opt["weight_decay"]),
        nesterov=nesterov,
        scheduler=scheduler,
        scheduler_args=MappingProxyType(scheduler_args),
        config=MappingProxyType(cfg),
    )


__all__ = ["Recipe", "from_config"]
