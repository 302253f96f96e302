"""The fused row loss as a torch custom operator, so ``torch.compile`` sees one opaque
op with a fake (shape-only) implementation instead of tracing into Triton or Python.

``fused_anl::row_loss(z3, target, weight?, hyper[], den?, ...) -> (loss_rows, grad)``:
per-row losses and, when ``compute_grad``, the gradient of ``sum(loss) / den``
(``den`` absent: of ``sum(loss)``). Without ``compute_grad`` the returned grad is an
empty tensor (custom ops return tensors).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import _hyper, _torch_backend


def run_row_loss(z3, target, weight, hyper: List[float], den, active: int, passive: int,
                 exact: bool, ignore_index: int, compute_grad: bool, backend: str, out=None):
    """Eager dispatch to a backend (also used directly by the fused linear loss)."""
    kw = dict(active=active, passive=passive, exact=exact, ignore_index=ignore_index,
              compute_grad=compute_grad, out=out)
    cdt = torch.float64 if z3.dtype == torch.float64 else torch.float32
    if backend == "triton":
        from .kernels import launch
        hv = _hyper.device_tensor(tuple(hyper), str(z3.device), cdt)
        return launch.row_loss(z3, target, weight, hv, den, **kw)
    return _torch_backend.row_loss(z3, target, weight, _hyper.by_name(hyper), den, **kw)


@torch.library.custom_op("fused_anl::row_loss", mutates_args=())
def row_loss_op(z3: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                hyper: List[float], den: Optional[torch.Tensor], active: int, passive: int,
                exact: bool, ignore_index: int, compute_grad: bool,
                backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, grad = run_row_loss(z3, target, weight, hyper, den, active, passive, exact,
                              ignore_index, compute_grad, backend)
    if grad is None:
        grad = z3.new_empty((0,))
    return loss, grad


@row_loss_op.register_fake
def _(z3, target, weight, hyper, den, active, passive, exact, ignore_index, compute_grad, backend):
    n, k, d = z3.shape
    cdt = torch.float64 if z3.dtype == torch.float64 else torch.float32
    loss = z3.new_empty((n * d,), dtype=cdt)
    grad = z3.new_empty((n, k, d)) if compute_grad else z3.new_empty((0,))
    return loss, grad
