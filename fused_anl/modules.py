"""``nn.Module`` wrappers: thin holders of hyperparameters around the functional API."""
from __future__ import annotations

import torch

from . import _registry as R
from .functional import loss_by_name


class FusedLoss(torch.nn.Module):
    """Base class: ``loss_name`` selects the loss; keywords are its hyperparameters."""

    loss_name: str = ""

    def __init__(self, *, reduction="mean", ignore_index=-100, weight=None, backend="auto",
                 detach_focal_weight=True, process_group=None, class_start=None, **hyper):
        super().__init__()
        self.process_group, self.class_start = process_group, class_start
        spec = R.LOSSES[self.loss_name]
        R.resolve_hyper(spec, hyper)  # validate now, not at the first call
        self.hyper = {k: float(v) for k, v in dict(spec.hyper, **hyper).items()}
        self.reduction, self.ignore_index, self.backend = reduction, ignore_index, backend
        self.detach_focal_weight = detach_focal_weight
        self.register_buffer("weight", weight)

    def forward(self, logits, target):
        kw = dict(self.hyper)
        if R.LOSSES[self.loss_name].focal:
            kw["detach_focal_weight"] = self.detach_focal_weight
        return loss_by_name(self.loss_name, logits, target, reduction=self.reduction,
                            ignore_index=self.ignore_index, weight=self.weight,
                            backend=self.backend, process_group=self.process_group,
                            class_start=self.class_start, **kw)

    def extra_repr(self):
        items = [f"{k}={v:g}" for k, v in self.hyper.items()]
        return ", ".join(items + [f"reduction={self.reduction!r}", f"backend={self.backend!r}"])


def _make(spec):
    def __init__(self, *args, **kwargs):
        names = list(spec.hyper)
        if len(args) > len(names):
            raise TypeError(f"{spec.module}() takes at most {len(names)} positional arguments")
        kwargs.update(zip(names, args))
        FusedLoss.__init__(self, **kwargs)

    doc = (f"Fused {spec.name}: {spec.doc}.\n\nArguments: "
           + ", ".join([f"{k}={v}" for k, v in spec.hyper.items()]
                       + ["reduction='mean'", "ignore_index=-100", "weight=None", "backend='auto'"]
                       + (["detach_focal_weight=True"] if spec.focal else [])))
    return type(spec.module, (FusedLoss,), {"loss_name": spec.name, "__init__": __init__,
                                            "__doc__": doc, "__module__": __name__})


__all__ = ["FusedLoss"]
for _spec in R.LOSSES.values():
    globals()[_spec.module] = _make(_spec)
    __all__.append(_spec.module)
