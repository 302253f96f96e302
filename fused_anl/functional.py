"""Fused functional API: ``fused_anl.<loss>(logits, target, *, ..., backend="auto")``.

One autograd Function serves every loss. Forward runs the chosen backend through
the ``fused_anl::row_loss`` custom op (so ``torch.compile`` sees a single opaque op),
computing the per-row loss and, when the logits require grad, the gradient of the
reduced loss in the same pass; backward only multiplies that gradient by
``grad_output`` (a scalar, or per-sample for ``reduction="none"``), in place and
without a host synchronisation (out of place under ``torch.compile``).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import threading

import torch

from . import _hyper, _ops
from . import _registry as R
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


def mean_denominator(t, weight, ignore_index, k, dtype):
    """Sum of the weights of non-ignored samples (1 each without class weights), as a
    1-element tensor, 1 where it is 0 (all ignored: the loss is then 0, not NaN)."""
    keep = t != ignore_index
    if weight is None:
        w = keep.to(dtype)
    else:
        w = torch.where(keep, weight.to(dtype)[t.long().clamp(0, k - 1)],
                        torch.zeros((), dtype=dtype, device=t.device))
    den = w.sum()
    return torch.where(den != 0, den, torch.ones_like(den)).reshape(1)


def _forward(ctx, logits, target, weight, op, reduction, dims, inplace, shard=None):
    """Shared forward: run the row loss (gradient included when needed) and reduce.

    shard: None, or (process_group, class_start) for class-parallel logits."""
    hyper, active, passive, exact, ignore_index, backend = op
    n, k, d = dims
    z3 = logits.reshape(n, k, d)  # a view whenever the trailing dims can be flattened
    t = target.reshape(-1)
    compute_grad = ctx.needs_input_grad[0]
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    den = mean_denominator(t, weight, ignore_index, k, cdt) if reduction == "mean" else None
    if shard is not None:
        from .distributed import sharded_row_loss
        loss_rows, grad = sharded_row_loss(
            z3, t, weight, hyper, den, active=active, passive=passive, exact=exact,
            ignore_index=ignore_index, compute_grad=compute_grad, backend=backend,
            group=shard[0], class_start=shard[1])
    elif inplace and compute_grad:
        if z3.data_ptr() != logits.data_ptr() or z3.numel() != logits.numel():
            raise ValueError("inplace_backward=True needs logits whose class dims can be viewed "
                             "as (N, K, D) without a copy")
        loss_rows, grad = _ops.run_row_loss(z3, t, weight, hyper, den, active, passive, exact,
                                            ignore_index, True, backend, out=z3)
    else:
        loss_rows, grad = torch.ops.fused_anl.row_loss(z3, t, weight, hyper, den, active, passive,
                                                       exact, ignore_index, compute_grad, backend)
    if reduction == "none":
        out = loss_rows.reshape(target.shape)
    elif reduction == "sum":
        out = loss_rows.sum()
    else:
        out = loss_rows.sum() / den[0]
    ctx.reduction, ctx.shape = reduction, logits.shape
    ctx.consumed = False
    ctx.repeatable = getattr(_state, "repeatable", False) or _compiling()
    return out, grad


def _backward(ctx, grad_out):
    """Scale the stored gradient by grad_output (scalar, or per sample for "none")."""
    if ctx.consumed:
        raise RuntimeError(
            "fused_anl: backward ran twice through the same loss call, but its stored "
            "gradient was scaled in place by the first one. Make the call inside "
            "`with fused_anl.repeatable_backward():` to allow repeated backward passes.")
    (grad,) = ctx.saved_tensors
    grad = grad.reshape(ctx.shape[0], ctx.shape[1], -1)
    go = grad_out.reshape(grad.shape[0], 1, -1) if ctx.reduction == "none" else grad_out
    if ctx.repeatable:
        return (grad * go).reshape(ctx.shape)
    ctx.consumed = True
    return grad.mul_(go).reshape(ctx.shape)


class _FusedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, op, reduction, dims, shard=None):
        out, grad = _forward(ctx, logits, target, weight, op, reduction, dims, False, shard)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(grad)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out), None, None, None, None, None, None


class _FusedLossInplace(torch.autograd.Function):
    """The gradient is written into the logits' storage (marked dirty: autograd then
    refuses any later use of the overwritten values)."""

    @staticmethod
    def forward(ctx, logits, target, weight, op, reduction, dims):
        out, _ = _forward(ctx, logits, target, weight, op, reduction, dims, True)
        ctx.mark_dirty(logits)
        ctx.mark_non_differentiable(logits)
        ctx.save_for_backward(logits)
        return out, logits

    @staticmethod
    def backward(ctx, grad_out, _unused):
        return _backward(ctx, grad_out), None, None, None, None, None


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover
        return False


def loss_by_name(name, logits, target, *, reduction="mean", ignore_index=-100, weight=None,
                 backend="auto", detach_focal_weight=True, inplace_backward=False,
                 process_group=None, class_start=None, **hyper):
    """Fused loss ``name`` (a key of ``fused_anl.LOSSES``) on logits ``(N, K, ...)``.

    ``inplace_backward=True`` writes the gradient into the logits' storage instead of
    a new ``N x K`` buffer (the logits must not be needed afterwards; autograd raises
    if they are). It is ignored under ``torch.compile`` and when no gradient is needed.

    ``process_group``: class-parallel mode (fused_anl/distributed.py). ``logits`` is
    this rank's slice of the classes, starting at ``class_start`` (default: rank x
    K_local, equal shards); ``target`` and ``weight`` are global. Every rank returns
    the full loss and gets the gradient of its own slice.
    """
    spec = R.LOSSES[name]
    h = R.resolve_hyper(spec, hyper)
    if process_group is not None:
        return _sharded(name, spec, h, logits, target, reduction, ignore_index, weight, backend,
                        detach_focal_weight, process_group, class_start)
    dims = check_inputs(name, logits, target, weight, reduction, ignore_index)
    b = resolve_backend(backend, logits.device)
    op = (_hyper.constants(h, spec.passive), spec.active, spec.passive, not detach_focal_weight,
          ignore_index, b)
    if inplace_backward and logits.requires_grad and torch.is_grad_enabled() and not _compiling():
        if logits.is_leaf:
            raise ValueError("inplace_backward=True cannot overwrite a leaf tensor that requires "
                             "grad; use it on logits produced by the model")
        return _FusedLossInplace.apply(logits, target, weight, op, reduction, dims)[0]
    return _FusedLoss.apply(logits, target, weight, op, reduction, dims)


def _sharded(name, spec, h, logits, target, reduction, ignore_index, weight, backend,
             detach_focal_weight, group, class_start):
    import torch.distributed as dist
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[1] < 1:
        raise ValueError(f"{name}: class-parallel logits must have shape (N, K_local, ...)")
    k_local = logits.shape[1]
    # The global class count, where it is known without communication.
    k_total = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.dim() == 1 else (
        k_local * dist.get_world_size(group) if class_start is None else None)
    # Check shapes and dtypes on a stand-in of the global logits (no memory), and label
    # values against the global count when it is known (a label no rank owns: NaN).
    stand_in = logits.new_empty((1,) * logits.dim()).expand(
        (logits.shape[0], k_total or 2) + tuple(logits.shape[2:]))
    n, _, d = check_inputs(name, stand_in, target, weight, reduction, ignore_index,
                           label_values=False if k_total else None)
    b = resolve_backend(backend, logits.device)
    op = (_hyper.constants(h, spec.passive), spec.active, spec.passive, not detach_focal_weight,
          ignore_index, b)
    return _FusedLoss.apply(logits, target, weight, op, reduction, (n, k_local, d),
                            (group, class_start))


def _make(name):
    spec = R.LOSSES[name]

    def fn(logits, target, **kwargs):
        return loss_by_name(name, logits, target, **kwargs)

    params = [inspect.Parameter("logits", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    kw = dict(spec.hyper, reduction="mean", ignore_index=-100, weight=None, backend="auto")
    if spec.focal:
        kw["detach_focal_weight"] = True
    kw["inplace_backward"] = False
    kw["process_group"] = None
    kw["class_start"] = None
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in kw.items()]
    fn.__signature__ = inspect.Signature(params)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (f"Fused {name}: {spec.doc}.\n\nReturns a float32 loss (float64 for float64 logits); "
                  "see the README for the keywords.")
    return fn


for _name in R.LOSSES:
    globals()[_name] = _make(_name)

__all__ = list(R.LOSSES) + ["loss_by_name", "repeatable_backward"]
