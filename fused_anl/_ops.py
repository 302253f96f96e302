"""The fused row loss as a torch custom operator, so ``torch.compile`` sees one opaque
op with a fake (shape-only) implementation instead of tracing into Triton or Python.

``fused_anl::row_loss(z3, target, weight?, hyper[], den?, ...) -> (loss_rows, grad, lse)``:
per-row losses and, when ``compute_grad``, the gradient of ``sum(loss) / den``
(``den`` absent: of ``sum(loss)``), and with ``return_lse`` each row's lse. Without
``compute_grad`` (``return_lse``) the returned grad (lse) is an empty tensor (custom ops
return tensors).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import _backend
from .kernels import _codes as C
from ._checks import compute_dtype


def run_row_loss(z3, target, weight, hyper: List[float], den, active: int, passive: int,
                 exact: bool, ignore_index: int, compute_grad: bool, backend: str, out=None,
                 lse_out=None):
    """Eager dispatch to a backend (fused_anl/_backend.py), outside any custom op (the
    in-place variant, whose output aliases its input, and the fused linear loss).

    Label smoothing with class weights: the weights go to the ``ls`` term, which weights
    each class of the smoothing sum and the label's own part itself, so the rows are not
    scaled by them again (``weight=None`` below; the mean's divisor still uses them)."""
    class_weights = None
    if passive == C.P_LS and weight is not None:
        class_weights, weight = weight, None
        hyper = list(hyper)
        hyper[C.H_LS_WEIGHTED] = 1.0
    return _backend.get(backend).row_loss(z3, target, weight, hyper, den, active=active,
                                          passive=passive, exact=exact,
                                          ignore_index=ignore_index, compute_grad=compute_grad,
                                          out=out, lse_out=lse_out, class_weights=class_weights)


@torch.library.custom_op("fused_anl::row_loss", mutates_args=())
def row_loss_op(z3: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                hyper: List[float], den: Optional[torch.Tensor], active: int, passive: int,
                exact: bool, ignore_index: int, compute_grad: bool, backend: str,
                return_lse: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, k, d = z3.shape
    lse = z3.new_empty((n * d if return_lse else 0,), dtype=compute_dtype(z3.dtype))
    loss, grad = run_row_loss(z3, target, weight, hyper, den, active, passive, exact,
                              ignore_index, compute_grad, backend,
                              lse_out=lse if return_lse else None)
    if grad is None:
        grad = z3.new_empty((0,))
    return loss, grad, lse


@row_loss_op.register_fake
def _(z3, target, weight, hyper, den, active, passive, exact, ignore_index, compute_grad, backend,
      return_lse=False):
    n, k, d = z3.shape
    cdt = compute_dtype(z3.dtype)
    loss = z3.new_empty((n * d,), dtype=cdt)
    grad = z3.new_empty((n, k, d)) if compute_grad else z3.new_empty((0,))
    return loss, grad, z3.new_empty((n * d if return_lse else 0,), dtype=cdt)


def _host_scalar_ok(go: torch.Tensor) -> bool:
    """A 1-element grad_output on the CPU is read on the host (no device to wait for)."""
    return go.numel() == 1 and go.device.type == "cpu"


def scale_grad(grad: torch.Tensor, grad_output: torch.Tensor, backend: str) -> None:
    """Eager ``grad *= grad_output`` in place (see ``fused_anl::scale_grad_``)."""
    go = grad_output.reshape(-1).to(grad.device).contiguous()  # an expanded one has stride 0
    if _host_scalar_ok(go) and go.item() == 1.0:
        return
    _backend.get(backend).scale_(grad, go)


@torch.library.custom_op("fused_anl::scale_grad_", mutates_args=("grad",))
def scale_grad_op(grad: torch.Tensor, grad_output: torch.Tensor, backend: str) -> None:
    """Backward of every fused loss: the gradient stored by forward, scaled in place by
    ``grad_output`` (1 element, or one per sample). With Triton, a scalar of exactly 1
    costs one tiny launch and no ``N x K`` memory traffic (kernels/scale.py)."""
    scale_grad(grad, grad_output, backend)


@scale_grad_op.register_fake
def _(grad, grad_output, backend):
    return None
