"""Fused linear + loss: the loss of ``hidden @ weight.T + bias`` without the N x K logits.

Rows are processed in chunks. For each chunk: its logits (one matmul), the fused
row-loss kernel, which writes the chunk's logit gradient over its logits, then the
chunk's share of the gradients of ``hidden`` (``g @ weight``), ``weight``
(``g.T @ hidden``, accumulated in float32) and ``bias`` (``sum g``, float32). Extra
memory is O(chunk x K + K x D) whatever N is.

For ``"mean"``/``"sum"`` the gradients are complete after forward and backward only
scales them by the scalar ``grad_output``, in place (``fused_anl::scale_grad_``: no pass
when it is 1), so, as for the plain losses, one backward per call unless
``fused_anl.repeatable_backward()``. For ``"none"`` the per-sample
``grad_output`` is unknown in forward, so backward recomputes each chunk's logits.
Both passes are torch custom ops, so ``torch.compile`` sees two opaque ops.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from . import _hyper
from . import _registry as R
from ._checks import check_inputs, compute_dtype
from ._checks import functorch_wrapped as _functorch_wrapped
from ._ops import run_row_loss
from .functional import _check_not_consumed, mean_denominator, repeatable_now, resolve_backend

# Elements (rows x K) of one chunk's logits when chunk_size is not given.
CHUNK_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 22}


def choose_chunk(n: int, k: int, device: torch.device, itemsize: int) -> int:
    budget = CHUNK_ELEMENTS.get(device.type, 1 << 22)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, max(1, free // (8 * itemsize)))  # leave room for the matmuls
    return int(max(1, min(n, budget // max(1, k))))


def _call(hyper, active, passive, exact, ignore_index, backend, shard=None):
    """The call object of the row loss (fused_anl/functional.py ``LossCall``), rebuilt from
    the flattened arguments of a custom op."""
    from .functional import LossCall
    return LossCall(name="linear_loss", hyper=(), constants=tuple(hyper), active=active,
                    passive=passive, exact=exact, ignore_index=ignore_index, reduction="none",
                    backend=backend, shard=shard)


def _chunks(hidden, weight, bias, target, loss_weight, call, den, chunk, compute_grad,
            row_scale=None):
    """Yield (start, stop, chunk inputs, per-row loss, logit gradient or None)."""
    n = hidden.shape[0]
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        h = hidden[a:b]
        logits = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
        z3 = logits.unsqueeze(-1)
        if call.shard is not None:  # weight holds this rank's rows (classes): shard statistics
            from .distributed import sharded_row_loss
            loss, g = sharded_row_loss(z3, target[a:b], loss_weight, list(call.constants), den,
                                       active=call.active, passive=call.passive,
                                       exact=call.exact, ignore_index=call.ignore_index,
                                       compute_grad=compute_grad, backend=call.backend,
                                       group=call.shard[0], class_start=call.shard[1])
        else:  # the gradient overwrites the chunk's logits
            loss, g = run_row_loss(z3, target[a:b], loss_weight, list(call.constants), den,
                                   call.active, call.passive, call.exact, call.ignore_index,
                                   compute_grad, call.backend, out=z3)
        if g is not None:
            g = g.squeeze(-1)
            if row_scale is not None:
                g.mul_(row_scale[a:b, None].to(g.dtype))
        yield a, b, h, loss, g


# The accumulating product of _accumulate_product for inputs of a dtype on a device:
# {(device, dtype): addmm or None}, filled by _probe_float32_addmm.
_FLOAT32_ADDMM = {}


def _probe_float32_addmm(device, dtype, addmm=torch.addmm):
    """``addmm`` if ``addmm(acc, a, b, out_dtype=torch.float32, out=acc)`` works and is
    exact for ``a``, ``b`` of ``dtype`` on ``device``, else None.

    PyTorch's ``addmm(..., out_dtype=torch.float32)`` (bf16/fp16 inputs, float32 output
    and accumulator) has CUDA kernels only, and which ``self``/``out`` dtypes it accepts
    has changed between releases. Rather than trust a version number, it is tried once on
    the real device in the layout the weight gradient uses (a transposed first operand,
    ``out`` aliasing ``self``): the product ``1 + 2^-12`` is exact in float32 but rounds
    to 1 through a bf16/fp16 temporary, so an op that is missing, raises, or rounds its
    output through the inputs' dtype is not used. One tiny product and one host sync,
    once per device and dtype (on the CPU it raises: not available)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None  # no host sync inside a CUDA graph capture; not cached, asked again later
    key = (device, dtype)
    if key not in _FLOAT32_ADDMM:
        ok = False
        try:
            m = torch.tensor([[1.0, 0.0], [2.0 ** -6, 0.0]], device=device).to(dtype)
            acc = torch.full((2, 2), 0.25, device=device)
            addmm(acc, m.t(), m, out_dtype=torch.float32, out=acc)
            want = torch.tensor([[1.25 + 2.0 ** -12, 0.25], [0.25, 0.25]], device=device)
            ok = acc.dtype == torch.float32 and torch.equal(acc, want)
        except (RuntimeError, NotImplementedError, TypeError):
            pass
        _FLOAT32_ADDMM[key] = addmm if ok else None
    return _FLOAT32_ADDMM[key]


def _accumulate_product(acc, a, b, max_temp: int) -> None:
    """``acc += a @ b`` with ``acc`` float32 (or float64) and ``a``, ``b`` possibly bf16/fp16.

    Same dtype: ``addmm_`` in place. Lower-precision inputs where the probe passed (CUDA):
    one ``addmm`` that accumulates and writes float32, no temporary and no rounding of
    the product. Otherwise the product is formed in the inputs' dtype a slice of ``a``'s
    rows at a time, each at most ``max_temp`` elements (the caller passes the chunk's
    logits size, so the temporary never exceeds memory already in use), then added into
    its rows of ``acc``."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    addmm = _probe_float32_addmm(acc.device, a.dtype)
    if addmm is not None:
        addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
        return
    rows = max(1, max_temp // max(1, b.shape[1]))
    for s in range(0, a.shape[0], rows):
        acc[s:s + rows] += a[s:s + rows] @ b


def _grads(hidden, weight, bias, target, loss_weight, call, den, chunk, needs, row_scale=None,
           loss_out=None):
    """Gradients of hidden, weight and bias, chunk by chunk: ``g @ weight`` written straight
    into the hidden gradient's rows, ``g.T @ h`` and ``sum g`` accumulated in float32
    (:func:`_accumulate_product`: no K x D temporary larger than the chunk's logits)."""
    gh = torch.empty_like(hidden) if needs[0] else None
    acc = compute_dtype(weight.dtype)
    gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if needs[1] else None
    gb = torch.zeros(bias.shape, dtype=acc, device=bias.device) if (
        bias is not None and needs[2]) else None
    for a, b, h, loss, g in _chunks(hidden, weight, bias, target, loss_weight, call, den, chunk,
                                    True, row_scale):
        if loss_out is not None:
            loss_out[a:b] = loss
        if gh is not None:
            torch.mm(g, weight, out=gh[a:b])
        if gw is not None:
            _accumulate_product(gw, g.t(), h, max_temp=g.numel())
        if gb is not None:
            gb += g.sum(0, dtype=gb.dtype)
    if call.shard is not None and gh is not None:
        # hidden is replicated: its gradient is the sum of every shard's g @ weight_shard
        import torch.distributed as dist
        dist.all_reduce(gh, group=call.shard[0])
    return gh, gw, gb


def _scaled(g, grad_out, dtype, in_place: bool, backend: str):
    """``(g * grad_out).to(dtype)`` for a gradient saved by forward, in one pass: in place
    when allowed and ``g`` already has ``dtype`` (kernels/scale.py: nothing at all when
    ``grad_out`` is 1), else written once into a new tensor of ``dtype`` (the float32
    weight gradient of bf16 weights: the result the caller returns, not a temporary)."""
    if in_place and g.dtype == dtype:
        torch.ops.fused_anl.scale_grad_(g.view(g.numel(), 1, 1), grad_out.reshape(-1), backend)
        return g
    return torch.mul(g, grad_out.to(g.dtype), out=torch.empty_like(g, dtype=dtype))


def _empty(x):
    return x.new_empty((0,))


def _fwd_impl(hidden, weight, bias, target, loss_weight, call, den, chunk, need_h, need_w,
              need_b):
    cdt = compute_dtype(hidden.dtype)
    loss = hidden.new_empty((hidden.shape[0],), dtype=cdt)
    if need_h or need_w or need_b:
        gh, gw, gb = _grads(hidden, weight, bias, target, loss_weight, call, den, chunk,
                            (need_h, need_w, need_b), loss_out=loss)
    else:
        gh = gw = gb = None
        for a, b, _, lr, _ in _chunks(hidden, weight, bias, target, loss_weight, call, None,
                                      chunk, False):
            loss[a:b] = lr
    return (loss, gh if gh is not None else _empty(hidden), gw if gw is not None else _empty(hidden),
            gb if gb is not None else _empty(hidden))


@torch.library.custom_op("fused_anl::linear_loss_fwd", mutates_args=())
def linear_loss_fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    target: torch.Tensor, loss_weight: Optional[torch.Tensor], hyper: List[float],
                    den: Optional[torch.Tensor], active: int, passive: int, exact: bool,
                    ignore_index: int, backend: str, chunk: int, need_h: bool, need_w: bool,
                    need_b: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    call = _call(hyper, active, passive, exact, ignore_index, backend)
    return _fwd_impl(hidden, weight, bias, target, loss_weight, call, den, chunk, need_h, need_w,
                     need_b)


@linear_loss_fwd.register_fake
def _(hidden, weight, bias, target, loss_weight, hyper, den, active, passive, exact, ignore_index,
      backend, chunk, need_h, need_w, need_b):
    cdt = compute_dtype(hidden.dtype)
    acc = compute_dtype(weight.dtype)
    return (hidden.new_empty((hidden.shape[0],), dtype=cdt),
            hidden.new_empty(hidden.shape) if need_h else _empty(hidden),
            weight.new_empty(weight.shape, dtype=acc) if need_w else _empty(hidden),
            weight.new_empty((weight.shape[0],), dtype=acc) if need_b else _empty(hidden))


@torch.library.custom_op("fused_anl::linear_loss_bwd_rows", mutates_args=())
def linear_loss_bwd_rows(grad_rows: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor], target: torch.Tensor,
                         loss_weight: Optional[torch.Tensor], hyper: List[float], active: int,
                         passive: int, exact: bool, ignore_index: int, backend: str, chunk: int,
                         need_h: bool, need_w: bool,
                         need_b: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of reduction="none": recompute each chunk, scale rows by grad_rows."""
    call = _call(hyper, active, passive, exact, ignore_index, backend)
    return _bwd_rows_impl(grad_rows, hidden, weight, bias, target, loss_weight, call, chunk,
                          need_h, need_w, need_b)


def _bwd_rows_impl(grad_rows, hidden, weight, bias, target, loss_weight, call, chunk, need_h,
                   need_w, need_b):
    gh, gw, gb = _grads(hidden, weight, bias, target, loss_weight, call, None, chunk,
                        (need_h, need_w, need_b), row_scale=grad_rows)
    return (gh if gh is not None else _empty(hidden), gw if gw is not None else _empty(hidden),
            gb if gb is not None else _empty(hidden))


@linear_loss_bwd_rows.register_fake
def _(grad_rows, hidden, weight, bias, target, loss_weight, hyper, active, passive, exact,
      ignore_index, backend, chunk, need_h, need_w, need_b):
    acc = compute_dtype(weight.dtype)
    return (hidden.new_empty(hidden.shape) if need_h else _empty(hidden),
            weight.new_empty(weight.shape, dtype=acc) if need_w else _empty(hidden),
            weight.new_empty((weight.shape[0],), dtype=acc) if need_b else _empty(hidden))


class _LinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, loss_weight, call, chunk):
        need = ctx.needs_input_grad[:3]
        need = (need[0], need[1], bias is not None and need[2])
        cdt = compute_dtype(hidden.dtype)
        k = loss_weight.shape[0] if loss_weight is not None else weight.shape[0]
        den = (mean_denominator(target, loss_weight, call.ignore_index, k, cdt)
               if call.reduction == "mean" else None)
        early = call.reduction != "none"  # gradients complete in forward, up to a scalar
        needs = (early and need[0], early and need[1], early and need[2])
        if call.shard is None:  # the custom op's boundary: the call object flattened
            loss, gh, gw, gb = torch.ops.fused_anl.linear_loss_fwd(
                hidden, weight, bias, target, loss_weight, list(call.constants), den,
                call.active, call.passive, call.exact, call.ignore_index, call.backend, chunk,
                *needs)
        else:  # collectives inside: not a custom op
            loss, gh, gw, gb = _fwd_impl(hidden, weight, bias, target, loss_weight, call, den,
                                         chunk, *needs)
        ctx.call, ctx.need, ctx.chunk = call, need, chunk
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.consumed = False
        ctx.repeatable = repeatable_now()
        if early:
            ctx.save_for_backward(gh, gw, gb)
        else:
            ctx.save_for_backward(hidden, weight, bias, target, loss_weight)
        if call.reduction == "none":
            return loss
        return loss.sum() if call.reduction == "sum" else loss.sum() / den[0]

    @staticmethod
    def backward(ctx, grad_out):
        need, call = ctx.need, ctx.call
        wdt = ctx.dtypes[1]
        if call.reduction != "none":
            _check_not_consumed(ctx)
            gh, gw, gb = ctx.saved_tensors
            # scaled in place (grad_output == 1: no pass at all on the Triton backend) unless
            # the saved gradients must survive (repeatable, a transform, create_graph)
            in_place = not (ctx.repeatable or torch.is_grad_enabled()
                            or _functorch_wrapped(grad_out))
            ctx.consumed = in_place
            gh = _scaled(gh, grad_out, gh.dtype, in_place, call.backend) if need[0] else None
            gw = _scaled(gw, grad_out, wdt, in_place, call.backend) if need[1] else None
            gb = _scaled(gb, grad_out, wdt, in_place, call.backend) if need[2] else None
        else:
            hidden, weight, bias, target, loss_weight = ctx.saved_tensors
            if call.shard is None:
                gh, gw, gb = torch.ops.fused_anl.linear_loss_bwd_rows(
                    grad_out, hidden, weight, bias, target, loss_weight, list(call.constants),
                    call.active, call.passive, call.exact, call.ignore_index, call.backend,
                    ctx.chunk, *need)
            else:
                gh, gw, gb = _bwd_rows_impl(grad_out, hidden, weight, bias, target, loss_weight,
                                            call, ctx.chunk, *need)
            gh, gw, gb = (gh if need[0] else None), (gw if need[1] else None), (gb if need[2] else None)
            gw = gw.to(wdt) if gw is not None else None
            gb = gb.to(wdt) if gb is not None else None
        if torch.is_grad_enabled():  # create_graph=True: refuse a silently zero 2nd derivative
            from .functional import _no_second_derivative
            hint = "Compute the logits and use the plain loss with double_backward=True."
            gh, gw, gb = (None if g is None else _no_second_derivative(g, "linear_loss", hint)
                          for g in (gh, gw, gb))
        return gh, gw, gb, None, None, None, None


def linear_loss(name, hidden, weight, target, bias=None, *, reduction="mean", ignore_index=-100,
                class_weight=None, chunk_size=None, backend="auto", detach_focal_weight=True,
                process_group=None, class_start=None, z_loss=0.0, logit_softcap=None,
                label_smoothing=0.0, **hyper):
    """Loss ``name`` of ``hidden @ weight.T + bias`` without materializing the logits.

    hidden ``(N, D)``; weight ``(K, D)`` as ``nn.Linear`` stores it; bias ``(K,)`` or None;
    target ``(N,)``. ``class_weight``: optional K class weights (``weight=`` of the
    plain losses). Gradients of hidden/weight/bias come back in their own dtypes,
    the weight and bias ones accumulated in float32.

    Class-parallel (``process_group``): ``weight``/``bias`` hold this rank's rows
    (classes, starting at ``class_start``, default rank x K_local), ``hidden`` and
    ``target`` are replicated; the loss is the full one on every rank, and the
    gradient of ``hidden`` is summed over ranks (one all_reduce).

    ``z_loss``, ``logit_softcap`` and (``ce`` only) ``label_smoothing`` are those of the
    plain losses (``help(fused_anl.ce)``), applied to each chunk's logits in the same pass.
    """
    if name in R.BATCH_LOSSES:
        return _linear_batch_loss(name, hidden, weight, target, bias, reduction=reduction,
                                  ignore_index=ignore_index, class_weight=class_weight,
                                  chunk_size=chunk_size, backend=backend,
                                  process_group=process_group, class_start=class_start,
                                  z_loss=z_loss, logit_softcap=logit_softcap,
                                  label_smoothing=label_smoothing, **hyper)
    if name not in R.LOSSES and name not in R.ROW_PARTS:
        raise ValueError(f"unknown loss {name!r}; valid names: "
                         f"{', '.join(sorted(list(R.LOSSES) + list(R.BATCH_LOSSES)))}")
    from .functional import check_options
    z_loss, cap, label_smoothing = check_options(name, z_loss, logit_softcap, label_smoothing,
                                                 False)
    spec = R.spec_of("ce:ls") if label_smoothing else R.spec_of(name)
    h = R.resolve_hyper(spec, dict(hyper, label_smoothing=label_smoothing)
                        if label_smoothing else hyper)
    h["z_loss"], h["logit_softcap"] = z_loss, cap
    if process_group is not None and (cap or (label_smoothing and class_weight is not None)):
        raise ValueError(f"linear_{name}: logit_softcap, and label_smoothing with class "
                         "weights, are not supported with process_group")
    for what, x, dim in (("hidden", hidden, 2), ("weight", weight, 2)):
        if not isinstance(x, torch.Tensor) or x.dim() != dim or not x.is_floating_point():
            raise ValueError(f"linear_{name}: {what} must be a floating {dim}-D tensor")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_{name}: hidden has D={hidden.shape[1]} features, weight has "
                         f"{weight.shape[1]}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"linear_{name}: hidden ({hidden.dtype}) and weight ({weight.dtype}) "
                        "must share a dtype")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(f"linear_{name}: bias must have shape ({weight.shape[0]},) and the "
                         "weight's dtype")
    n, k = hidden.shape[0], weight.shape[0]
    k_all = k
    if process_group is not None:
        import torch.distributed as dist
        k_all = class_weight.shape[0] if class_weight is not None else (
            k * dist.get_world_size(process_group) if class_start is None else None)
    stand_in = hidden.new_empty((1, 1)).expand(n, k_all or 2)  # shape, dtype, device; no memory
    check_inputs(f"linear_{name}", stand_in, target, class_weight, reduction, ignore_index,
                 label_values=False if k_all else None)
    b = resolve_backend(backend, hidden.device)
    chunk = int(chunk_size) if chunk_size else choose_chunk(n, k, hidden.device,
                                                            hidden.element_size())
    if chunk < 1:
        raise ValueError(f"linear_{name}: chunk_size must be >= 1, got {chunk_size}")
    from .functional import LossCall
    call = LossCall(name=name, hyper=tuple((key, h[key]) for key in spec.hyper),
                    constants=tuple(_hyper.constants(h, spec.passive, spec.active)),
                    active=spec.active,
                    passive=spec.passive, exact=not detach_focal_weight,
                    ignore_index=int(ignore_index), reduction=reduction, backend=b,
                    shard=(process_group, class_start) if process_group is not None else None)
    return _LinearLoss.apply(hidden, weight, bias, target.reshape(-1), class_weight, call, chunk)


def _linear_batch_loss(name, hidden, weight, target, bias, *, reduction, ignore_index,
                       class_weight, chunk_size, backend, process_group, class_start, z_loss,
                       logit_softcap, label_smoothing, **hyper):
    """A loss of R.BATCH_LOSSES (ANL-CE-ER) on ``hidden @ weight.T + bias``: its rows through
    the fused linear row loss, plus ``lamb * E`` from fused_anl.batch_entropy's chunked
    linear form (fused_anl/functional.py ``_batch_loss`` is the same on logits).

    Cost beyond the rows: one more logits product in forward (the column sums need every
    row's probabilities, and the rows' pass overwrites its logits with their gradient)
    and, in backward, one logits product plus the two gradient products."""
    from .batch_entropy import linear_batch_entropy
    from .functional import add_batch_term, batch_hyper
    h = batch_hyper(name, hyper)
    if process_group is not None:
        raise ValueError(f"linear_{name}: the fused linear form of a loss with a batch term is "
                         "not class-parallel; use the plain loss on the logit shards")
    if z_loss or logit_softcap is not None or label_smoothing:
        raise ValueError(f"linear_{name}: z_loss, logit_softcap and label_smoothing are not "
                         "available for a loss with a batch term")
    rows = linear_loss(f"{name}:rows", hidden, weight, target, bias, reduction=reduction,
                       ignore_index=ignore_index, class_weight=class_weight,
                       chunk_size=chunk_size, backend=backend,
                       **{k: h[k] for k in R.ROW_PARTS[f"{name}:rows"].hyper})
    n, k = hidden.shape[0], weight.shape[0]
    chunk = int(chunk_size) if chunk_size else choose_chunk(n, k, hidden.device,
                                                            hidden.element_size())
    E = linear_batch_entropy(hidden, weight, bias, target, p_min=h["p_min"],
                             ignore_index=ignore_index, chunk_size=chunk)
    return add_batch_term(rows, h["lamb"] * E, target, ignore_index, reduction)


def _make(name):
    def fn(hidden, weight, target, bias=None, **kwargs):
        return linear_loss(name, hidden, weight, target, bias, **kwargs)

    import inspect
    P = inspect.Parameter
    spec = R.spec_of(name)
    kw = dict(spec.hyper, reduction="mean", ignore_index=-100, class_weight=None,
              chunk_size=None, backend="auto")
    if spec.focal:
        kw["detach_focal_weight"] = True
    kw.update(process_group=None, class_start=None)
    if name not in R.BATCH_LOSSES:
        kw.update(z_loss=0.0, logit_softcap=None)
    if name == "ce":
        kw["label_smoothing"] = 0.0
    fn.__signature__ = inspect.Signature(
        [P(a, P.POSITIONAL_OR_KEYWORD) for a in ("hidden", "weight", "target")]
        + [P("bias", P.POSITIONAL_OR_KEYWORD, default=None)]
        + [P(k, P.KEYWORD_ONLY, default=v) for k, v in kw.items()])
    fn.__name__ = fn.__qualname__ = f"linear_{name}"
    fn.__doc__ = (f"Fused linear + {name} (``{spec.doc}``): the loss of ``hidden @ weight.T + "
                  f"bias`` without the N x K logits.\n\nSame as ``fused_anl.linear_loss({name!r}, "
                  "hidden, weight, target, bias, ...)``, whose docstring describes the "
                  "arguments; the hyperparameters are those of ``fused_anl." + name + "``.")
    return fn


class LinearLoss(torch.nn.Module):
    """Holds a loss name and its hyperparameters; called with ``(hidden, weight, target, bias=None)``."""

    loss_name = ""

    def __init__(self, name=None, **kwargs):
        super().__init__()
        self.name = name or self.loss_name
        if self.name not in R.LOSSES and self.name not in R.BATCH_LOSSES:
            raise ValueError(f"unknown loss {self.name!r}")
        R.resolve_hyper(R.spec_of(self.name), {k: v for k, v in kwargs.items()
                                               if k in R.spec_of(self.name).hyper})
        self.kwargs = kwargs

    def forward(self, hidden, weight, target, bias=None):
        return linear_loss(self.name, hidden, weight, target, bias, **self.kwargs)

    def extra_repr(self):
        spec = R.spec_of(self.name)
        hyper = dict(spec.hyper, **{k: v for k, v in self.kwargs.items() if k in spec.hyper})
        items = [f"loss={self.name!r}"] + [f"{k}={float(v):g}" for k, v in hyper.items()]
        for k, v in self.kwargs.items():
            if k in spec.hyper:
                continue
            if isinstance(v, torch.Tensor):
                items.append(f"{k}=<tensor of shape {tuple(v.shape)}>")
            elif k == "process_group" and v is not None:
                items.append("process_group=<set>")
            else:
                items.append(f"{k}={v!r}")
        return ", ".join(items)


class LinearANLCELoss(LinearLoss):
    loss_name = "anl_ce"

    def __init__(self, **kwargs):
        super().__init__("anl_ce", **kwargs)


__all__ = ["linear_loss", "LinearLoss", "LinearANLCELoss"]
for _name in R.public_names():
    globals()[f"linear_{_name}"] = _make(_name)
    __all__.append(f"linear_{_name}")
