"""Fused functional API: ``fused_anl.<loss>(logits, target, *, ..., backend="auto")``.

One autograd Function serves every loss. Forward runs the chosen backend, which
computes the per-row loss and, when the logits require grad, the gradient of the
reduced loss in the same pass; backward only multiplies that gradient by
``grad_output`` (a scalar, or per-sample for ``reduction="none"``), in place and
without a host synchronisation.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import threading

import torch

from . import _hyper
from . import _registry as R
from . import _torch_backend
from ._checks import check_inputs

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    triton_ok = triton_available() and (device.type == "cuda" or (_interpreting() and device.type == "cpu"))
    if backend == "auto":
        return "triton" if triton_ok else "torch"
    if backend == "triton" and not triton_ok:
        raise ValueError(
            "backend='triton' needs CUDA tensors and Triton (or CPU tensors with TRITON_INTERPRET=1); "
            f"got a tensor on {device}{'' if triton_available() else ' and Triton is not installed'}"
        )
    return backend


_state = threading.local()


@contextlib.contextmanager
def repeatable_backward(enabled: bool = True):
    """Let backward run more than once per loss call (``retain_graph=True``, gradcheck,
    jacobians) for the calls made inside this context.

    By default backward scales the gradient computed in forward *in place*, which
    saves an ``N x K`` buffer but allows one backward per call (a second one raises).
    Inside this context backward writes a new tensor instead.
    """
    old = getattr(_state, "repeatable", False)
    _state.repeatable = enabled
    try:
        yield
    finally:
        _state.repeatable = old


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, spec, h, reduction, ignore_index, exact, backend, dims):
        n, k, d = dims
        z3 = logits.reshape(n, k, d)  # a view whenever the trailing dims can be flattened
        t = target.reshape(-1)
        compute_grad = ctx.needs_input_grad[0]
        cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
        den = None
        keep = (t != ignore_index)
        if reduction == "mean":
            wsum = keep.to(cdt) if weight is None else torch.where(
                keep, weight.to(cdt)[t.long().clamp(0, k - 1)], torch.zeros((), dtype=cdt, device=t.device))
            den = wsum.sum()
            den = torch.where(den != 0, den, torch.ones_like(den)).reshape(1)
        kw = dict(active=spec.active, passive=spec.passive, exact=exact, ignore_index=ignore_index,
                  compute_grad=compute_grad)
        if backend == "triton":
            from .kernels import launch
            hv = _hyper.hyper_tensor(h, spec.passive, logits.device, cdt)
            loss_rows, grad = launch.row_loss(z3, t, weight, hv, den, **kw)
        else:
            hv = _hyper.constants_dict(h, spec.passive)
            loss_rows, grad = _torch_backend.row_loss(z3, t, weight, hv, den, **kw)
        if reduction == "none":
            out = loss_rows.reshape(target.shape)
        elif reduction == "sum":
            out = loss_rows.sum()
        else:
            out = loss_rows.sum() / den[0]
        ctx.reduction = reduction
        ctx.shape = logits.shape
        ctx.consumed = False
        ctx.repeatable = getattr(_state, "repeatable", False)
        if compute_grad:
            ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.consumed:
            raise RuntimeError(
                "fused_anl: backward ran twice through the same loss call, but its stored "
                "gradient was scaled in place by the first one. Make the call inside "
                "`with fused_anl.repeatable_backward():` to allow repeated backward passes.")
        (grad,) = ctx.saved_tensors
        go = grad_out.reshape(grad.shape[0], 1, -1) if ctx.reduction == "none" else grad_out
        if ctx.repeatable:
            grad = grad * go
        else:
            ctx.consumed = True
            grad.mul_(go)
        return grad.reshape(ctx.shape), None, None, None, None, None, None, None, None, None


def loss_by_name(name, logits, target, *, reduction="mean", ignore_index=-100, weight=None,
                 backend="auto", detach_focal_weight=True, **hyper):
    """Fused loss ``name`` (a key of ``fused_anl.LOSSES``) on logits ``(N, K, ...)``."""
    spec = R.LOSSES[name]
    h = R.resolve_hyper(spec, hyper)
    dims = check_inputs(name, logits, target, weight, reduction, ignore_index)
    b = resolve_backend(backend, logits.device)
    return _FusedLoss.apply(logits, target, weight, spec, h, reduction, ignore_index,
                            not detach_focal_weight, b, dims)


def _make(name):
    spec = R.LOSSES[name]

    def fn(logits, target, **kwargs):
        return loss_by_name(name, logits, target, **kwargs)

    params = [inspect.Parameter("logits", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    kw = dict(spec.hyper, reduction="mean", ignore_index=-100, weight=None, backend="auto")
    if spec.focal:
        kw["detach_focal_weight"] = True
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in kw.items()]
    fn.__signature__ = inspect.Signature(params)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"Fused {name}: {spec.doc}.\n\nReturns a float32 loss (float64 for float64 logits); "
                  "see the README for the keywords.")
    return fn


for _name in R.LOSSES:
    globals()[_name] = _make(_name)

__all__ = list(R.LOSSES) + ["loss_by_name", "repeatable_backward"]
