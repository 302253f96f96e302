"""``nn.Module`` wrappers: thin holders of hyperparameters around the functional API.

The ANL modules (:class:`ANLCELoss`, :class:`ANLFLLoss`) also hold ANL's L1 weight
``delta`` and give the training loop its term through :meth:`ANLLoss.regularizer`.
"""
from __future__ import annotations

import inspect
import math
import warnings

import torch

from . import _registry as R
from .functional import check_options, loss_by_name
from .recipes import l1_penalty

_COMMON = dict(reduction="mean", ignore_index=-100, weight=None, backend="auto",
               detach_focal_weight=True, process_group=None, class_start=None)


class FusedLoss(torch.nn.Module):
    """Base class: ``loss_name`` selects the loss; keywords are its hyperparameters."""

    loss_name: str = ""
    delta: float = 0.0  # ANL's L1 weight; only the ANL modules take it
    _regularizer_asked = False

    def __init__(self, *, reduction="mean", ignore_index=-100, weight=None, backend="auto",
                 detach_focal_weight=True, process_group=None, class_start=None, z_loss=0.0,
                 logit_softcap=None, **hyper):
        super().__init__()
        self.process_group, self.class_start = process_group, class_start
        spec = R.spec_of(self.loss_name)
        # the options of every loss (fused_anl/functional.py), and CE's label smoothing;
        # kept when not at their defaults
        label_smoothing = hyper.pop("label_smoothing", 0.0) if self.loss_name == "ce" else 0.0
        check_options(self.loss_name, z_loss, logit_softcap, label_smoothing, False)
        if self.loss_name in R.BATCH_LOSSES and (z_loss or logit_softcap is not None):
            raise ValueError(f"{type(self).__name__}: z_loss and logit_softcap are not "
                             "available for a loss with a batch term")
        self.options = {k: v for k, v in (("label_smoothing", label_smoothing),
                                          ("z_loss", z_loss), ("logit_softcap", logit_softcap))
                        if v}
        if "delta" in hyper:
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword 'delta': delta is the L1 "
                "weight of the ANL losses (ANLCELoss, ANLFLLoss, ANLCEERLoss); this loss has none")
        R.resolve_hyper(spec, hyper)  # validate now, not at the first call
        self.hyper = {k: float(v) for k, v in dict(spec.hyper, **hyper).items()}
        self.reduction, self.ignore_index, self.backend = reduction, ignore_index, backend
        self.detach_focal_weight = detach_focal_weight
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        kw = dict(self.hyper)
        if R.spec_of(self.loss_name).focal:
            kw["detach_focal_weight"] = self.detach_focal_weight
        return loss_by_name(self.loss_name, logits, target, reduction=self.reduction,
                            ignore_index=self.ignore_index, weight=self.weight,
                            backend=self.backend, process_group=self.process_group,
                            class_start=self.class_start, **self.options, **kw)

    @property
    def l1_delta(self) -> float:
        """ANL's L1 weight ``delta`` (0 for the other losses), under the name
        ``get_loss`` used before the ANL modules took ``delta``."""
        return self.delta

    @l1_delta.setter
    def l1_delta(self, value: float) -> None:
        self.delta = float(value)

    def regularizer(self, model) -> torch.Tensor:
        r"""ANL's L1 term: ``delta * sum |theta|`` over the parameters of ``model``.

        Args:
            model (torch.nn.Module or iterable of Tensors): the model being trained (all
                its parameters are penalized, biases and normalization layers included,
                as in the published code), or the parameters themselves.

        Returns:
            Tensor: a differentiable scalar to add to the loss before ``backward`` (and
            so before gradient clipping). Zero when ``delta`` is 0, which it always is
            for the losses other than ANL-CE and ANL-FL: a training loop that adds it
            works unchanged for every loss.

        Example::

            >>> criterion = fused_anl.ANLCELoss(alpha=5.0, beta=5.0, delta=5e-5)
            >>> loss = criterion(model(x), y) + criterion.regularizer(model)
        """
        self._regularizer_asked = True
        if isinstance(model, torch.nn.Module):
            params = list(model.parameters())
        else:
            params = list(model)
        if not self.delta:
            device = params[0].device if params else None
            return torch.zeros((), device=device)
        return self.delta * l1_penalty(params)

    def _repr_items(self):
        """``name=value`` for every hyperparameter, then every non-default setting."""
        items = [f"{k}={v:g}" for k, v in self.hyper.items()]
        for key, default in _COMMON.items():
            if key == "detach_focal_weight" and not R.spec_of(self.loss_name).focal:
                continue
            value = getattr(self, key)
            if key == "weight":
                if value is not None:
                    items.append(f"weight=<tensor of {value.numel()} class weights>")
            elif key == "process_group":
                if value is not None:
                    items.append("process_group=<set>")
            elif value != default:
                items.append(f"{key}={value!r}")
        items += [f"{k}={v:g}" for k, v in getattr(self, "options", {}).items()]
        if getattr(self, "num_classes", None) is not None:
            items.append(f"num_classes={self.num_classes}")
        return items

    def extra_repr(self):
        return ", ".join(self._repr_items())


class ANLLoss(FusedLoss):
    """Base of the Active Negative Losses: adds ANL's L1 term.

    The published recipe trains ANL with ``loss + delta * sum |theta|`` over every
    parameter of the model (biases and norm layers included) and weight decay 0. The
    term depends on the model, not on the logits, so the module does not add it to its
    output: ask for it with :meth:`regularizer` and add it to the loss::

        loss = criterion(model(x), y) + criterion.regularizer(model)

    A module with ``delta > 0`` that is called in training (gradients enabled, logits
    that require grad) three times while :meth:`regularizer` was never called warns once
    (``UserWarning``): the L1 term is being left out.
    """

    def __init__(self, *, delta: float = 0.0, **kwargs):
        if isinstance(delta, bool) or not isinstance(delta, (int, float)):
            raise TypeError(f"{type(self).__name__}: delta must be a number, got "
                            f"{type(delta).__name__}")
        if not (math.isfinite(delta) and delta >= 0.0):
            raise ValueError(f"{type(self).__name__}: delta (the L1 weight) must be finite "
                             f"and >= 0, got {delta}")
        super().__init__(**kwargs)
        self.delta = float(delta)
        self._regularizer_asked = False
        self._training_calls = 0
        self._warned = False

    def forward(self, logits, target):
        if (self.delta and not self._regularizer_asked and not self._warned
                and not torch.compiler.is_compiling()
                and self.training and torch.is_grad_enabled() and logits.requires_grad):
            # a loop may call the loss before regularizer(), and a user may try the loss
            # once before training: three training calls without it mean the loop never
            # asks for it
            self._training_calls += 1
            if self._training_calls >= 3:
                self._warned = True
                warnings.warn(
                    f"{type(self).__name__}(delta={self.delta:g}) is training without its L1 "
                    f"term: add criterion.regularizer(model) to the loss (the published recipe: "
                    f"loss + delta * sum |theta| over all parameters, weight decay 0). Build it "
                    f"with delta=0 to train without it.", UserWarning, stacklevel=4)  # the caller of the module
        return super().forward(logits, target)

    def extra_repr(self):
        items = self._repr_items()
        n_hyper = len(self.hyper)
        return ", ".join(items[:n_hyper] + [f"delta={self.delta:g}"] + items[n_hyper:])


ANL_LOSSES = ("anl_ce", "anl_fl", "anl_ce_er")


def _make(spec):
    anl = spec.name in ANL_LOSSES
    base = ANLLoss if anl else FusedLoss

    def __init__(self, *args, **kwargs):
        names = list(spec.hyper)
        if len(args) > len(names):
            raise TypeError(f"{spec.module}() takes at most {len(names)} positional arguments")
        kwargs.update(zip(names, args))
        base.__init__(self, **kwargs)

    doc = (f"Fused {spec.name}: {spec.doc}.\n\nArguments: "
           + ", ".join([f"{k}={v}" for k, v in spec.hyper.items()]
                       + (["delta=0.0 (ANL's L1 weight: add regularizer(model) to the loss)"]
                          if anl else [])
                       + (["label_smoothing=0.0"] if spec.name == "ce" else [])
                       + ["reduction='mean'", "ignore_index=-100", "weight=None", "backend='auto'"]
                       + (["detach_focal_weight=True"] if spec.focal else [])
                       + ([] if spec.name in R.BATCH_LOSSES
                          else ["z_loss=0.0", "logit_softcap=None"])))
    P = inspect.Parameter
    params = ([P("self", P.POSITIONAL_OR_KEYWORD)]
              + [P(k, P.POSITIONAL_OR_KEYWORD, default=v) for k, v in spec.hyper.items()]
              + ([P("delta", P.KEYWORD_ONLY, default=0.0)] if anl else [])
              + ([P("label_smoothing", P.KEYWORD_ONLY, default=0.0)] if spec.name == "ce" else [])
              + [P(k, P.KEYWORD_ONLY, default=v) for k, v in _COMMON.items()
                 if k != "detach_focal_weight" or spec.focal]
              + ([] if spec.name in R.BATCH_LOSSES else
                 [P("z_loss", P.KEYWORD_ONLY, default=0.0),
                  P("logit_softcap", P.KEYWORD_ONLY, default=None)]))
    __init__.__signature__ = inspect.Signature(params)
    __init__.__qualname__ = f"{spec.module}.__init__"
    return type(spec.module, (base,), {"loss_name": spec.name, "__init__": __init__,
                                       "__doc__": doc, "__module__": __name__})


__all__ = ["FusedLoss", "ANLLoss"]
for _spec in [R.spec_of(n) for n in R.public_names()]:
    globals()[_spec.module] = _make(_spec)
    __all__.append(_spec.module)
