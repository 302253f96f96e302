"""The hyperparameter vector the kernels read (layout: kernels/_codes.py).

Hyperparameters travel as a small device tensor rather than as kernel scalars so
that float64 logits get float64 constants (Triton passes Python floats as fp32),
and derived constants (log p_min, NNCE's and NNFL's A, AGCE/AUL's constant) are
computed once here in double precision. Tensors are cached per (values, device,
dtype), so steady-state calls allocate and copy nothing.
"""
from __future__ import annotations

import functools
import math

import torch

from . import _registry as R
from .kernels import _codes as C


def constants(h: dict, passive: int) -> list:
    """The vector's values, in layout order, from resolved hyperparameters."""
    v = [0.0] * C.H_SIZE
    pm, g, q, a = h["p_min"], h["gamma"], h["q"], h["a"]
    v[C.H_ALPHA], v[C.H_BETA], v[C.H_GAMMA], v[C.H_Q], v[C.H_A] = h["alpha"], h["beta"], g, q, a
    v[C.H_LOG_PMIN] = math.log(pm)
    v[C.H_A_NNCE] = -math.log(pm)
    v[C.H_A_NNFL] = -((1.0 - pm) ** g) * math.log(pm)
    if passive == R.P_AGCE:
        v[C.H_C_PASS] = (a + 1.0) ** q
    elif passive == R.P_AUL:
        v[C.H_C_PASS] = (a - 1.0) ** q
    v[C.H_RCE_A] = R.RCE_A
    v[C.H_P_FLOOR] = R.P_FLOOR
    return v


@functools.lru_cache(maxsize=512)
def device_tensor(values: tuple, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The constants as a tensor on ``device`` (cached: steady-state calls copy nothing)."""
    return torch.tensor(values, dtype=dtype, device=device)


def by_name(values) -> dict:
    """The constants by name, as Python floats (for the torch backend)."""
    return dict(alpha=values[C.H_ALPHA], beta=values[C.H_BETA], gamma=values[C.H_GAMMA],
                q=values[C.H_Q], a=values[C.H_A], log_pmin=values[C.H_LOG_PMIN],
                A_nnce=values[C.H_A_NNCE], A_nnfl=values[C.H_A_NNFL], C_pass=values[C.H_C_PASS])
