"""Fused functional API: ``fused_anl.<loss>(logits, target, *, ..., backend="auto")``.

One autograd Function serves every loss. Forward runs the chosen backend through
the ``fused_anl::row_loss`` custom op (so ``torch.compile`` sees a single opaque op),
computing the per-row loss and, when the logits require grad, the gradient of the
reduced loss in the same pass. Backward only scales that gradient by
``grad_output`` (a scalar, or per-sample for ``reduction="none"``) in place through
the ``fused_anl::scale_grad_`` custom op: with Triton a ``grad_output`` of exactly 1
costs no pass over the gradient, decided on the device (kernels/scale.py).

What is refused rather than answered wrongly:

- a second derivative (``create_graph=True`` and then differentiating the gradient):
  the gradient is computed in closed form and has no graph, so differentiating it
  raises, unless the call was made with ``double_backward=True`` (then backward
  differentiates the eager reference, exactly, at the reference's cost);
- a use of logits that ``inplace_backward=True`` overwrote, when autograd sees it
  (a gradient arriving through the overwritten tensor raises in backward);
- ``torch.vmap`` and ``torch.func`` transforms are supported (a per-sample loop for
  vmap); the in-place variant is not used under them.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from . import _hyper, _ops
from . import _registry as R
from ._checks import _compiling, check_inputs, compute_dtype
from ._checks import functorch_wrapped as _functorch_wrapped

BACKENDS = ("auto", "triton", "torch")


# The oldest Triton release the kernels are checked with: tests/test_gpu_compile.py
# compiles every kernel for sm_90 with the installed Triton and with the GPU image's 3.6.
# (By hand, 2026-12-02: 3.5.1 compiles them but one split-row kernel spills; 3.4 and
# older lack ``triton.constexpr_function``.)
MIN_TRITON = (3, 6)
_MIN_TRITON_TEXT = ".".join(map(str, MIN_TRITON))


def triton_version() -> Optional[str]:
    """The installed Triton's version string, or None when ``import triton`` fails."""
    try:
        import triton
    except Exception:  # depends on the install
        return None
    return str(getattr(triton, "__version__", "0"))


@functools.lru_cache(maxsize=None)
def _release(version: str) -> tuple:
    """(major, minor) of a version string such as ``3.6.0`` or ``3.7.0+git1a2b3c``."""
    parts = re.findall(r"\d+", version)[:2]
    return tuple(int(x) for x in parts) + (0,) * (2 - len(parts))


def triton_available() -> bool:
    """Whether a Triton the kernels support (``MIN_TRITON`` or newer) is installed."""
    return not _triton_missing()


@torch.compiler.assume_constant_result  # read while torch.compile traces a loss call
def _triton_missing() -> str:
    """Why the installed Triton cannot run the kernels ('' when it can)."""
    version = triton_version()
    if version is None:
        return "Triton is not installed"
    if _release(version) < MIN_TRITON:
        return (f"Triton {version} is installed, older than {_MIN_TRITON_TEXT}, "
                "the oldest release the kernels support")
    return ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend a call runs: ``"auto"`` becomes ``"triton"`` where the kernels can run
    (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``, with a supported Triton),
    else ``"torch"`` (with a warning, once, on CUDA tensors when Triton is there but too
    old); ``"triton"`` where they cannot raises a ``ValueError`` that says why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    place_ok = device.type == "cuda" or (_interpreting() and device.type == "cpu")
    missing = _triton_missing()
    if backend == "auto":
        if place_ok and missing and not _compiling() and triton_version() is not None:
            _warn_old_triton(missing)  # installed but too old: say why the kernels are not used
        return "triton" if place_ok and not missing else "torch"
    if backend == "triton" and not (place_ok and not missing):
        why = [] if place_ok else [f"got a tensor on {device}"]
        why += [missing] if missing else []
        raise ValueError(
            f"backend='triton' needs CUDA tensors and Triton >= {_MIN_TRITON_TEXT} (or CPU "
            "tensors with TRITON_INTERPRET=1): "
            + "; ".join(why))
    return backend


@functools.lru_cache(maxsize=None)
def _warn_old_triton(why: str) -> None:
    warnings.warn(f"fused_anl: {why}; backend='auto' runs the torch backend (the same "
                  "values, without the fused kernels)", RuntimeWarning, stacklevel=4)


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


def repeatable_now() -> bool:
    """Whether a loss call made now must keep its saved gradient intact for another
    backward: inside :func:`repeatable_backward`, or while ``torch.compile`` traces
    (the compiled graph may be replayed)."""
    return getattr(_state, "repeatable", False) or _compiling()


@dataclass(frozen=True)
class LossCall:
    """Everything about one loss call except its tensors: built once by the public
    function, carried through both autograd Functions, and flattened only at the
    custom-op boundary."""

    name: str
    hyper: tuple  # resolved hyperparameters as (name, value) pairs (the reference's keywords)
    constants: tuple  # the kernels' hyperparameter vector (fused_anl/_hyper.py)
    active: int
    passive: int
    exact: bool  # not detach_focal_weight: the focal weight is differentiated
    ignore_index: int
    reduction: str
    backend: str  # resolved: "triton" or "torch"
    double_backward: bool = False
    shard: Optional[tuple] = None  # (process_group, class_start) for class-parallel logits
    options: tuple = ()  # the reference's keywords for z_loss, logit_softcap, label_smoothing
    return_lse: bool = False


def mean_denominator(t, weight, ignore_index, k, dtype):
    """``"mean"``'s divisor as a 1-element tensor: the sum of the weights of the
    non-ignored samples (1 each without class weights), exactly as
    ``torch.nn.functional.cross_entropy`` divides (all samples ignored: 0, so the mean
    is NaN; weights summing to 0: inf or NaN; a negative sum is used as it is)."""
    keep = t != ignore_index
    if weight is None:
        w = keep.to(dtype)
    else:
        # the weight vector's own length: k is the local class count of a class shard
        w = torch.where(keep, weight.to(dtype)[t.long().clamp(0, weight.shape[0] - 1)],
                        torch.zeros((), dtype=dtype, device=t.device))
    return w.sum().reshape(1)


def _forward(logits, target, weight, call: LossCall, dims, compute_grad, inplace):
    """Per-row losses (gradient included when asked), reduced. Returns (loss, grad, lse),
    grad an (N, K, D) tensor, or an empty one without compute_grad; lse the rows' lse in
    the target's shape with ``call.return_lse``, else an empty tensor."""
    n, k, d = dims
    z3 = logits.reshape(n, k, d)  # a view whenever the trailing dims can be flattened
    t = target.reshape(-1)
    cdt = compute_dtype(logits.dtype)
    den = mean_denominator(t, weight, call.ignore_index, k, cdt) if call.reduction == "mean" else None
    lse = logits.new_empty((0,), dtype=cdt)
    if call.shard is not None:
        from .distributed import sharded_row_loss
        res = sharded_row_loss(
            z3, t, weight, list(call.constants), den, active=call.active, passive=call.passive,
            exact=call.exact, ignore_index=call.ignore_index, compute_grad=compute_grad,
            backend=call.backend, group=call.shard[0], class_start=call.shard[1],
            return_lse=call.return_lse)
        loss_rows, grad = res[:2]
        if call.return_lse:
            lse = res[2]
    elif inplace:
        if z3.data_ptr() != logits.data_ptr() or z3.numel() != logits.numel():
            raise ValueError("inplace_backward=True needs logits whose class dims can be viewed "
                             "as (N, K, D) without a copy")
        if call.return_lse:
            lse = logits.new_empty((t.numel(),), dtype=cdt)
        loss_rows, grad = _ops.run_row_loss(z3, t, weight, list(call.constants), den, call.active,
                                            call.passive, call.exact, call.ignore_index, True,
                                            call.backend, out=z3,
                                            lse_out=lse if call.return_lse else None)
    else:
        loss_rows, grad, lse = torch.ops.fused_anl.row_loss(
            z3, t, weight, list(call.constants), den, call.active, call.passive, call.exact,
            call.ignore_index, compute_grad, call.backend, call.return_lse)
    if call.reduction == "none":
        out = loss_rows.reshape(target.shape)
    elif call.reduction == "sum":
        out = loss_rows.sum()
    else:
        out = loss_rows.sum() / den[0]
    if grad is None:
        grad = logits.new_empty((0,))
    if call.return_lse:
        lse = lse.reshape(target.shape)
    return out, grad, lse


def _setup(ctx, logits, target, weight, call, dims):
    ctx.call, ctx.dims, ctx.shape = call, dims, logits.shape
    ctx.consumed = False
    ctx.repeatable = repeatable_now()
    if call.double_backward:
        ctx.reference_inputs = (logits, target, weight)


_NO_SECOND = ("fused_anl.{name}: its gradient is computed in closed form and has no autograd "
              "graph, so it cannot be differentiated again (a gradient penalty or other "
              "second derivative through this loss). {hint}")
_HINT = ("Call the loss with double_backward=True to differentiate the eager reference "
         "instead (exact; costs the reference's time and memory).")


def _no_second_derivative(g, name, hint=_HINT):
    """The gradient, made to raise a clear error if anything differentiates it: backward
    ran with ``create_graph=True`` and the result would otherwise be a gradient with no
    graph, i.e. a silently zero second derivative (the mechanism of
    ``torch.autograd.function.once_differentiable``)."""
    err = torch._C._functions.DelayedError(_NO_SECOND.format(name=name, hint=hint).encode(), 1)
    g = g.detach()
    g.requires_grad_(True)
    return err(g)


def _reference_grad(ctx, grad_out):
    """double_backward=True: the gradient as a differentiable function of the logits,
    from the eager reference (the oracle of the tests), for second derivatives."""
    from . import reference
    call = ctx.call
    logits, target, weight = ctx.reference_inputs
    with torch.enable_grad():
        loss = reference.loss_by_name(call.name, logits, target, reduction=call.reduction,
                                      ignore_index=call.ignore_index, weight=weight,
                                      detach_focal_weight=not call.exact, **dict(call.hyper),
                                      **dict(call.options))
        (g,) = torch.autograd.grad(loss, logits, grad_out, create_graph=True)
    return g


def _check_not_consumed(ctx):
    """Before the saved gradient is unpacked (autograd's own version check would fire
    first, with a less helpful message)."""
    if ctx.consumed:
        raise RuntimeError(
            "fused_anl: backward ran twice through the same loss call, but its stored "
            "gradient was scaled in place by the first one. Make the call inside "
            "`with fused_anl.repeatable_backward():` to allow repeated backward passes.")


def _backward(ctx, grad, grad_out):
    """Scale the stored gradient by grad_output (scalar, or per sample for "none")."""
    call = ctx.call
    if torch.is_grad_enabled() and call.double_backward:
        return _reference_grad(ctx, grad_out)
    n, k, d = ctx.dims
    grad = grad.reshape(n, k, d)
    transformed = _functorch_wrapped(grad_out) or _functorch_wrapped(grad)
    if ctx.repeatable or transformed or torch.is_grad_enabled():
        go = grad_out.reshape(n, 1, d) if call.reduction == "none" else grad_out
        g = (grad * go).reshape(ctx.shape)
        if torch.is_grad_enabled() and not transformed:
            g = _no_second_derivative(g, call.name)
        return g
    ctx.consumed = True
    torch.ops.fused_anl.scale_grad_(grad, grad_out.reshape(-1), call.backend)
    return grad.reshape(ctx.shape)


class _FusedLoss(torch.autograd.Function):
    """Outputs (loss, stored gradient, lse); the last two are non-differentiable (the
    gradient is internal, the lse is returned detached with ``return_lse``)."""

    @staticmethod
    def forward(logits, target, weight, call, dims, compute_grad):
        return _forward(logits, target, weight, call, dims, compute_grad, False)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, call, dims, compute_grad = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        # no zero-filled N x K gradient for the stored-gradient output (which nothing
        # differentiates): materialized, it doubled backward's peak memory
        ctx.set_materialize_grads(False)
        _setup(ctx, logits, target, weight, call, dims)
        if compute_grad:
            ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad_out, _, __):
        if grad_out is None:
            return None, None, None, None, None, None
        _check_not_consumed(ctx)
        (grad,) = ctx.saved_tensors
        return _backward(ctx, grad, grad_out), None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, logits, target, weight, call, dims, compute_grad):
        """``torch.vmap``: one fused call per vmapped sample (exact; a loop)."""
        outs, grads, lses = [], [], []
        for b in range(info.batch_size):
            def pick(x, dim):
                return x if x is None or dim is None else x.select(dim, b)
            o, g, lse = _FusedLoss.forward(pick(logits, in_dims[0]), pick(target, in_dims[1]),
                                           pick(weight, in_dims[2]), call, dims, compute_grad)
            outs.append(o)
            grads.append(g)
            lses.append(lse)
        return (torch.stack(outs), torch.stack(grads), torch.stack(lses)), (0, 0, 0)


class _FusedLossInplace(torch.autograd.Function):
    """The gradient is written into the logits' storage, which is marked dirty and
    returned as a second output: a later use of the overwritten tensor that autograd
    sees sends a gradient into it, and backward refuses that gradient."""

    @staticmethod
    def forward(logits, target, weight, call, dims, compute_grad):
        out, _, lse = _forward(logits, target, weight, call, dims, True, True)
        return out, logits, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, call, dims, compute_grad = inputs
        ctx.mark_dirty(logits)
        ctx.mark_non_differentiable(output[2])
        ctx.set_materialize_grads(False)
        _setup(ctx, logits, target, weight, call, dims)
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad_out, grad_through_logits, _):
        if grad_through_logits is not None:
            raise RuntimeError(
                f"fused_anl.{ctx.call.name}(..., inplace_backward=True) overwrote its logits "
                "with the gradient, but a later operation used the overwritten logits and "
                "sent a gradient back through them: its result was computed from gradient "
                "values, not logits. Use the logits before the loss call, or clone them, or "
                "drop inplace_backward=True.")
        if grad_out is None:
            return None, None, None, None, None, None
        _check_not_consumed(ctx)
        (grad,) = ctx.saved_tensors
        return _backward(ctx, grad, grad_out), None, None, None, None, None


def check_options(name, z_loss, logit_softcap, label_smoothing, return_lse):
    """Validate the options every loss takes; returns them normalized (floats, cap 0: none)."""
    def number(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: {key} must be a finite number, got {v!r}")
        return float(v)
    z_loss = number("z_loss", z_loss)
    if z_loss < 0:
        raise ValueError(f"{name}: z_loss must be >= 0, got {z_loss}")
    cap = 0.0
    if logit_softcap is not None:
        cap = number("logit_softcap", logit_softcap)
        if cap <= 0:
            raise ValueError(f"{name}: logit_softcap must be > 0 (or None for no cap), got {cap}")
    label_smoothing = number("label_smoothing", label_smoothing)
    if label_smoothing and name != "ce":
        raise TypeError(f"{name}: label_smoothing is an option of ce only (as in "
                        f"F.cross_entropy); got label_smoothing={label_smoothing}")
    if label_smoothing:  # its range: the ls term's own check (kernels/_codes.py TERMS)
        R.resolve_hyper(R.spec_of("ce:ls"), {"label_smoothing": label_smoothing})
    if not isinstance(return_lse, bool):
        raise TypeError(f"{name}: return_lse must be a bool, got {return_lse!r}")
    return z_loss, cap, label_smoothing


def loss_by_name(name, logits, target, *, reduction="mean", ignore_index=-100, weight=None,
                 backend="auto", detach_focal_weight=True, inplace_backward=False,
                 double_backward=False, process_group=None, class_start=None, z_loss=0.0,
                 logit_softcap=None, label_smoothing=0.0, return_lse=False, **hyper):
    """Fused loss ``name`` (a key of ``fused_anl.LOSSES``) on logits ``(N, K, ...)``.

    The keywords are those of every loss function (see ``help(fused_anl.anl_ce)``);
    ``hyper`` holds the loss's own hyperparameters. Returns the loss, or ``(loss, lse)``
    with ``return_lse=True``.
    """
    z_loss, cap, label_smoothing = check_options(name, z_loss, logit_softcap, label_smoothing,
                                                 return_lse)
    opts = dict(z_loss=z_loss, logit_softcap=logit_softcap, label_smoothing=label_smoothing,
                return_lse=return_lse)
    if type(logits).__name__ == "DTensor":  # class-parallel logits as a DTensor
        from . import distributed
        if distributed.is_dtensor(logits):
            if process_group is not None or class_start is not None:
                raise ValueError(f"{name}: DTensor logits carry their own process group and "
                                 "class offset; do not pass process_group or class_start")
            local, target, weight, group, start, wrap = distributed.from_dtensor(
                name, logits, target, weight)
            res = loss_by_name(
                name, local, target, reduction=reduction, ignore_index=ignore_index,
                weight=weight, backend=backend, detach_focal_weight=detach_focal_weight,
                inplace_backward=inplace_backward, double_backward=double_backward,
                process_group=group, class_start=start, **opts, **hyper)
            return (wrap(res[0]), res[1]) if return_lse else wrap(res)
    if name in R.BATCH_LOSSES:
        if z_loss or cap or return_lse:
            raise ValueError(f"{name}: z_loss, logit_softcap and return_lse are not available "
                             "for a loss with a batch term")
        return _batch_loss(name, logits, target, reduction=reduction, ignore_index=ignore_index,
                           weight=weight, backend=backend, inplace_backward=inplace_backward,
                           double_backward=double_backward, process_group=process_group,
                           class_start=class_start, **hyper)
    if label_smoothing:  # CE with label smoothing is its own term (fused_anl/_registry.py VARIANTS)
        name, hyper = "ce:ls", dict(hyper, label_smoothing=label_smoothing)
    spec = R.spec_of(name)
    h = R.resolve_hyper(spec, hyper)
    h["z_loss"], h["logit_softcap"] = z_loss, cap
    if process_group is not None and cap:
        raise ValueError(f"{name}: logit_softcap is not supported with process_group "
                         "(class-parallel logits); cap the logits before the loss")
    if process_group is not None and label_smoothing and weight is not None:
        raise ValueError(f"{name}: label_smoothing with class weights is not supported with "
                         "process_group (class-parallel logits)")
    if process_group is not None:
        if double_backward:
            raise ValueError(f"{name}: double_backward=True is not supported with process_group "
                             "(class-parallel logits)")
        n, k_local, d = _check_sharded(name, logits, target, weight, reduction, ignore_index,
                                       process_group, class_start)
        dims = (n, k_local, d)
        shard = (process_group, class_start)
    else:
        dims = check_inputs(name, logits, target, weight, reduction, ignore_index)
        shard = None
    call = LossCall(name=name, hyper=tuple((key, h[key]) for key in spec.hyper),
                    constants=tuple(_hyper.constants(h, spec.passive, spec.active)),
                    active=spec.active,
                    passive=spec.passive, exact=not detach_focal_weight,
                    ignore_index=int(ignore_index), reduction=reduction,
                    backend=resolve_backend(backend, logits.device),
                    double_backward=bool(double_backward), shard=shard,
                    options=tuple((k, v) for k, v in (("z_loss", z_loss),
                                                      ("logit_softcap", logit_softcap))
                                  if v),
                    return_lse=return_lse)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    if (inplace_backward and compute_grad and shard is None and not double_backward
            and not _compiling() and not _functorch_wrapped(logits)):
        if logits.is_leaf:
            raise ValueError("inplace_backward=True cannot overwrite a leaf tensor that requires "
                             "grad; use it on logits produced by the model")
        res = _FusedLossInplace.apply(logits, target, weight, call, dims, True)
        return (res[0], res[2]) if return_lse else res[0]
    res = _FusedLoss.apply(logits, target, weight, call, dims, compute_grad)
    return (res[0], res[2]) if return_lse else res[0]


def _batch_loss(name, logits, target, *, reduction, ignore_index, weight, backend,
                inplace_backward, double_backward, process_group, class_start, **hyper):
    """A loss of R.BATCH_LOSSES (ANL-CE-ER): its rows through the fused row loss, plus
    ``lamb * E``, the batch entropy term (fused_anl/batch_entropy.py), added once.

    ``reduction="none"`` spreads ``lamb * E`` evenly over the counted (non-ignored)
    samples, so that the per-sample values sum to the ``"sum"`` result; class weights
    weight the rows, not E. E reads the logits once more (one pass forward, one backward:
    fused_anl/batch_entropy.py), and its gradient is added to the rows' by autograd.
    """
    from .batch_entropy import batch_entropy
    h = batch_hyper(name, hyper)
    if inplace_backward:
        raise ValueError(f"{name}: inplace_backward=True is not supported: the batch term "
                         "reads the logits after the row loss would have overwritten them")
    if double_backward:
        if process_group is not None:
            raise ValueError(f"{name}: double_backward=True is not supported with process_group")
        from . import reference  # twice differentiable: autograd of the definition
        return reference.loss_by_name(name, logits, target, reduction=reduction,
                                      ignore_index=ignore_index, weight=weight, **hyper)
    rows = loss_by_name(f"{name}:rows", logits, target, reduction=reduction,
                        ignore_index=ignore_index, weight=weight, backend=backend,
                        process_group=process_group, class_start=class_start,
                        **{k: h[k] for k in R.ROW_PARTS[f"{name}:rows"].hyper})
    E = batch_entropy(logits, target, p_min=h["p_min"], ignore_index=ignore_index,
                      process_group=process_group, class_start=class_start)
    return add_batch_term(rows, h["lamb"] * E, target, ignore_index, reduction)


def batch_hyper(name, hyper):
    """The resolved hyperparameters of a loss of R.BATCH_LOSSES, p_min checked."""
    h = R.resolve_hyper(R.BATCH_LOSSES[name], hyper)
    if not 0.0 < h["p_min"] < 0.5:
        raise ValueError(f"{name}: p_min must lie in (0, 0.5) (probabilities are clamped to "
                         f"[p_min, 1 - p_min]), got {h['p_min']}")
    return h


def add_batch_term(rows, term, target, ignore_index, reduction):
    """``rows`` (the reduced row loss, or per sample for "none") plus a batch term added
    once: "none" spreads it evenly over the counted samples, so they sum to "sum"."""
    if reduction == "none":
        counted = (target.reshape(rows.shape) != ignore_index).to(rows.dtype)
        return rows + term * (counted / counted.sum().clamp_min(1.0))
    return rows + term


def _check_sharded(name, logits, target, weight, reduction, ignore_index, group, class_start):
    """Validate class-parallel inputs; returns (N, K_local, D)."""
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
    return n, k_local, d


_COMMON_ARGS = """
    Args:
        logits (Tensor): unnormalized scores of shape ``(N, K)`` or ``(N, K, d1, ...)``,
            float32, float16, bfloat16 or float64. ``-inf`` marks an absent class
            (padding), which takes part in no sum; a NaN or ``+inf`` anywhere in a row
            makes that sample's loss and gradient NaN.
        target (Tensor): class indices of shape ``(N,)`` or ``(N, d1, ...)``, int64 or
            int32, in ``[0, K)`` or equal to ``ignore_index``.
{hyper}        reduction (str): ``"mean"`` (sum of the weighted losses divided by the sum
            of the weights of the non-ignored samples, as ``F.cross_entropy``),
            ``"sum"`` or ``"none"``. Default: ``"mean"``.
        ignore_index (int): samples with this label contribute 0 to the loss and get a
            zero gradient. Default: -100.
        weight (Tensor, optional): ``(K,)`` class weights; each sample's loss is
            multiplied by its label's weight. Default: None.
        backend (str): ``"triton"`` (fused kernels: CUDA, or CPU under
            ``TRITON_INTERPRET=1``), ``"torch"`` (the same algorithm in PyTorch ops,
            any device) or ``"auto"``. Default: ``"auto"``.
{focal}        inplace_backward (bool): write the gradient into the logits' storage instead of
            a new ``N x K`` buffer. The logits hold the gradient after the call; a later
            use of them that autograd sees raises in backward. Default: False.
        double_backward (bool): keep the logits so that the gradient can be
            differentiated again (``create_graph=True``), through the eager reference.
            Without it a second derivative raises. Default: False.
        process_group (ProcessGroup, optional): class-parallel mode: ``logits`` is this
            rank's slice of the classes (``target`` and ``weight`` are global); every rank
            gets the full loss and the gradient of its slice. Default: None.
        class_start (int, optional): first class of this rank's slice (default: rank x
            K_local, equal shards).
        z_loss (float): add ``z_loss * lse^2`` to each sample's loss (PaLM's and OLMo's
            z-loss; ``lse`` the log-sum-exp of its logits, after the soft cap), weighted by
            its class weight like the rest of it. Its gradient ``2 z_loss lse p_j`` is
            fused. Default: 0.
        logit_softcap (float, optional): ``cap``: the loss sees ``cap * tanh(z / cap)``
            (Gemma 2's soft cap) instead of ``z``, and the gradient is with respect to the
            uncapped logits. ``-inf`` stays ``-inf`` (absent); ``+inf`` gives a NaN row.
            Not with ``process_group``. Default: None (no cap).
        return_lse (bool): also return each sample's ``lse`` (of the capped logits; 0 for
            an ignored sample), float32, in the target's shape, detached: it is a by-product
            of the row statistics. For a penalty on it use ``z_loss``. Default: False.


    ``logits`` may also be a ``DTensor`` sharded on the class dimension over one mesh
    dimension (TorchTitan's loss parallel); it then takes the class-parallel path over
    that mesh dimension's group, and the loss is returned as a replicated DTensor.

    Returns:
        Tensor: the loss, float32 (float64 for float64 logits); shape ``()``, or the
        target's shape for ``reduction="none"``. The gradient has the logits' dtype and
        is computed in float32. With ``return_lse=True``: ``(loss, lse)``.

    Shape:
        - logits: ``(N, K)`` or ``(N, K, d1, ..., dk)``
        - target: ``(N,)`` or ``(N, d1, ..., dk)``
        - output: ``()`` or, for ``"none"``, the target's shape.

    Example::

        >>> logits = torch.randn(8, 10, requires_grad=True)
        >>> target = torch.randint(0, 10, (8,))
        >>> fused_anl.{name}(logits, target).backward()
"""

# one docstring line per hyperparameter (kernels/_codes.py HYPERS)
_HYPER_DOCS = {k: hp.doc for k, hp in R.HYPERS.items()}


def docstring(name: str) -> str:
    """The PyTorch-style docstring of the fused function ``name``."""
    spec = R.spec_of(name)
    hyper = "".join(f"        {_HYPER_DOCS[k].format(v=v)}\n" for k, v in spec.hyper.items())
    if name == "ce":
        hyper += ("        label_smoothing (float): as ``F.cross_entropy``'s, in [0, 1]: the "
                  "target is\n            ``1 - eps`` on the label plus ``eps / K`` on each of "
                  "the K present classes;\n            with ``weight``, the smoothing sum is "
                  "weighted by each class's weight and\n            ``\"mean\"`` divides by "
                  "the labels' weights, exactly as ``F.cross_entropy``. Default: 0.\n")
    focal = ("        detach_focal_weight (bool): treat the focal weight as a constant in the "
             "gradient,\n            as the published code does; False gives the true derivative. "
             "Default: True.\n") if spec.focal else ""
    batch = ("\n    ``E`` is one number per batch (the non-ignored samples), added once to the "
             "``\"mean\"``\n    or ``\"sum\"`` result; ``\"none\"`` spreads ``lamb * E`` evenly "
             "over the counted\n    samples (their sum is the ``\"sum\"`` result). Class weights "
             "weight the rows, not E.\n    Not available with ``inplace_backward``, "
             "``z_loss`` or ``logit_softcap``; its fused\n    linear form is "
             "``fused_anl.linear_loss(\"anl_ce_er\", ...)``.\n") if name in R.BATCH_LOSSES else ""
    return (f"Fused {name}: per-sample loss ``{spec.doc}`` (the loss's definition: "
            f"docs/semantics.md).\n" + batch
            + _COMMON_ARGS.format(hyper=hyper, focal=focal, name=name))


def _make(name):
    import inspect
    spec = R.spec_of(name)

    def fn(logits, target, **kwargs):
        return loss_by_name(name, logits, target, **kwargs)

    params = [inspect.Parameter("logits", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    kw = dict(spec.hyper, reduction="mean", ignore_index=-100, weight=None, backend="auto")
    if spec.focal:
        kw["detach_focal_weight"] = True
    if name == "ce":
        kw["label_smoothing"] = 0.0
    kw.update(inplace_backward=False, double_backward=False, process_group=None,
              class_start=None, z_loss=0.0, logit_softcap=None, return_lse=False)
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in kw.items()]
    fn.__signature__ = inspect.Signature(params)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = docstring(name)
    return fn


for _name in R.public_names():
    globals()[_name] = _make(_name)

__all__ = R.public_names() + ["loss_by_name", "repeatable_backward"]
