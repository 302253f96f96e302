"""One interface, two implementations: the operations every loss path is made of.

=================  ==============================================================
``row_loss``       per-row losses of whole rows and, optionally, the gradient of
                   ``sum(loss) / den`` (written into ``out``, which may be the logits)
``shard_stats1``   a class shard's row statistics (max, sum exp, sum (z - max), #present)
``shard_stats2``   its lse-dependent sums, given every shard's stats1
``shard_finish``   loss rows and the shard's gradient columns from the combined sums
``scale_``         backward: the stored gradient times ``grad_output``, in place
=================  ==============================================================

The plain loss is ``row_loss`` then, in backward, ``scale_``; the in-place variant is the
same with ``out`` = the logits; the fused linear loss calls ``row_loss`` on each chunk of
logits it forms; class-parallel is ``shard_stats1`` -> all_gather -> ``shard_stats2`` ->
all_reduce -> ``shard_finish`` (fused_anl/distributed.py). ``TRITON`` runs them as the
kernels of ``kernels/`` (launch policy and device guard in kernels/launch.py), ``TORCH``
as chunked PyTorch ops (fused_anl/_torch_backend.py), on any device.

Hyperparameters arrive as the constants vector (fused_anl/_hyper.py ``constants``) and
each backend reads them in its own form.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Tuple

import torch

from . import _hyper
from .kernels import _codes as _C
from . import _torch_backend as _T
from ._checks import compute_dtype

Tensor = torch.Tensor


class Backend(Protocol):
    name: str

    def row_loss(self, z3: Tensor, target: Tensor, weight: Optional[Tensor],
                 constants: Sequence[float], den: Optional[Tensor], *, active: int, passive: int,
                 exact: bool, ignore_index: int, compute_grad: bool,
                 out: Optional[Tensor] = None, lse_out: Optional[Tensor] = None,
                 class_weights: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]: ...

    def shard_stats1(self, z3: Tensor) -> Tensor: ...

    def shard_stats2(self, z3: Tensor, y_local: Tensor, constants: Sequence[float],
                     parts1: Tensor, *, active: int, passive: int, exact: bool) -> Tensor: ...

    def shard_finish(self, z3: Tensor, y_local: Tensor, row_weight: Tensor, zy: Tensor,
                     constants: Sequence[float], den: Optional[Tensor], parts1: Tensor,
                     parts2: Tensor, *, active: int, passive: int, exact: bool,
                     ignore_index: int, compute_grad: bool) -> Tuple[Tensor, Optional[Tensor]]: ...

    def scale_(self, grad: Tensor, grad_output: Tensor) -> Tensor: ...


class _Triton:
    name = "triton"

    @staticmethod
    def _hyper(constants, z, class_weights=None):
        h = _hyper.device_tensor(tuple(constants), str(z.device), compute_dtype(z.dtype))
        if class_weights is not None:  # read per element by the ls term (kernels/_codes.py)
            h = torch.cat([h, class_weights.to(h.dtype)])
        return h

    def row_loss(self, z3, target, weight, constants, den, class_weights=None, **kw):
        from .kernels import launch
        return launch.row_loss(z3, target, weight, self._hyper(constants, z3, class_weights),
                               den, softcap=constants[_C.H_SOFTCAP] != 0,
                               z_loss=constants[_C.H_Z_LOSS] != 0, **kw)

    def shard_stats1(self, z3):
        from .kernels import launch
        return launch.shard_stats1(z3)

    def shard_stats2(self, z3, y_local, constants, parts1, **kw):
        from .kernels import launch
        return launch.shard_stats2(z3, y_local, self._hyper(constants, z3), parts1, **kw)

    def shard_finish(self, z3, y_local, row_weight, zy, constants, den, parts1, parts2, **kw):
        from .kernels import launch
        return launch.shard_finish(z3, y_local, row_weight, zy, self._hyper(constants, z3), den,
                                   parts1, parts2, z_loss=constants[_C.H_Z_LOSS] != 0, **kw)

    def scale_(self, grad, grad_output):
        from .kernels import launch
        if not grad.is_contiguous():  # the in-place variant's gradient has the logits' strides
            return _T.scale_(grad, grad_output)
        return launch.scale_(grad, grad_output.contiguous())


class _Torch:
    name = "torch"

    def row_loss(self, z3, target, weight, constants, den, class_weights=None, **kw):
        hv = _hyper.by_name(constants)
        if class_weights is not None:
            hv["ls_weight"] = class_weights.to(compute_dtype(z3.dtype))
        return _T.row_loss(z3, target, weight, hv, den, **kw)

    def shard_stats1(self, z3):
        return _T.shard_stats1(z3)

    def shard_stats2(self, z3, y_local, constants, parts1, **kw):
        return _T.shard_stats2(z3, y_local, _hyper.by_name(constants), parts1, **kw)

    def shard_finish(self, z3, y_local, row_weight, zy, constants, den, parts1, parts2, **kw):
        return _T.shard_finish(z3, y_local, row_weight, zy, _hyper.by_name(constants), den,
                               parts1, parts2, **kw)

    def scale_(self, grad, grad_output):
        return _T.scale_(grad, grad_output)


TRITON: Backend = _Triton()
TORCH: Backend = _Torch()
_BY_NAME = {"triton": TRITON, "torch": TORCH}


def get(name: str) -> Backend:
    """The backend of a resolved name (``fused_anl.functional.resolve_backend``)."""
    return _BY_NAME[name]
