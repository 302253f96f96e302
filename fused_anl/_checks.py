"""Input validation shared by every backend.

Every check here reads only shapes, dtypes and devices, except the label checks,
which read values and so run only where that costs no device synchronisation
(CPU tensors, outside ``torch.compile`` tracing). On CUDA an out-of-range label
or a label on an absent (``-inf``) class gives a NaN loss for that sample instead
(see README, "Semantics that surprise people").
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("mean", "sum", "none")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic dtype of every path: float64 for float64 logits, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def functorch_wrapped(t) -> bool:
    """True for a tensor seen inside a ``torch.func`` transform (grad, vmap, jacrev...),
    where reading values (the label checks) is data-dependent control flow."""
    if _compiling():  # dynamo cannot trace these C queries; compiled code sees no wrappers
        return False
    f = torch._C._functorch
    return isinstance(t, torch.Tensor) and (f.is_functorch_wrapped_tensor(t) or f.is_batchedtensor(t))


def check_inputs(name, logits, target, weight, reduction, ignore_index, label_values=True):
    """Validate and return ``(N, K, D)``: rows are ``N * D`` samples of ``K`` classes.

    ``logits`` may be a stand-in of the right shape, dtype and device (an expanded
    tensor) when ``label_values`` is False: then only the label range is checked,
    without reading logits; ``None`` skips the label checks.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name}: target must be a torch.Tensor, got {type(target).__name__}")
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: logits must be float16, bfloat16, float32 or float64, got {logits.dtype}"
        )
    if target.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name}: target must hold class indices as int64 or int32, got {target.dtype}")
    if logits.dim() < 2:
        raise ValueError(f"{name}: logits must have shape (N, K) or (N, K, d1, ...), got {tuple(logits.shape)}")
    n, k = logits.shape[0], logits.shape[1]
    expected = (n,) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{name}: target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)} (expected {expected})"
        )
    if k < 2:
        raise ValueError(f"{name}: need at least K=2 classes, got K={k}")
    if target.device != logits.device:
        raise ValueError(f"{name}: target is on {target.device} but logits are on {logits.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{name}: ignore_index must be an int, got {type(ignore_index).__name__}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            raise TypeError(f"{name}: weight must be a floating tensor of K={k} class weights")
        if tuple(weight.shape) != (k,):
            raise ValueError(f"{name}: weight must have shape ({k},), got {tuple(weight.shape)}")
        if weight.device != logits.device:
            raise ValueError(f"{name}: weight is on {weight.device} but logits are on {logits.device}")
    d = 1
    for s in logits.shape[2:]:
        d *= s
    if label_values is not None and logits.device.type == "cpu" and not _compiling() \
            and target.numel() > 0 and not functorch_wrapped(target) \
            and not functorch_wrapped(logits):
        _check_labels(name, logits if label_values else None, target, ignore_index, k)
    return n, k, d


def _check_labels(name, logits, target, ignore_index, k):
    t = target.reshape(-1).long()
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= k))
    if bool(bad.any()):
        raise ValueError(
            f"{name}: labels must lie in [0, {k}) or equal ignore_index={ignore_index}; "
            f"found {int(t[bad][0])}"
        )
    if logits is None:
        return
    rows = logits.movedim(1, -1).reshape(-1, k)
    zy = rows.gather(1, t.clamp(0, k - 1).unsqueeze(1))[keep]  # N values read, no N x K copy
    if bool(torch.isneginf(zy).any()):
        raise ValueError(f"{name}: a label points at an absent class (its logit is -inf)")
