"""The hyperparameter vector the kernels read (layout: kernels/_codes.py).

Hyperparameters travel as a small device tensor rather than as kernel scalars so
that float64 logits get float64 constants (Triton passes Python floats as fp32),
and derived constants (log p_min, NNCE's and NNFL's A, AGCE/AUL's constant) are
computed once here in double precision, by the ``constants`` rule of each term's row in
kernels/_codes.py ``TERMS``. Tensors are cached per (values, device, dtype), so
steady-state calls allocate and copy nothing.
"""
from __future__ import annotations

import functools

import torch

from .kernels import _codes as C


def constants(h: dict, passive: int, active: int = C.A_NONE) -> list:
    """The vector's values, in layout order, from resolved hyperparameters: the plain
    hyperparameters in their slots, then the derived constants of the passive term (and
    of ``active``; no active term has any today). Slots no term of the loss reads are 0."""
    v = [0.0] * C.H_SIZE
    for name, hp in C.HYPERS.items():
        if hp.slot is not None:
            v[hp.slot] = h[name]
    for term in (C.ACTIVE_TERMS[active], C.PASSIVE_TERMS[passive]):
        for slot, value in term.constants(h).items():
            v[slot] = value
    return v


@functools.lru_cache(maxsize=512)
def device_tensor(values: tuple, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The constants as a tensor on ``device`` (cached: steady-state calls copy nothing)."""
    return torch.tensor(values, dtype=dtype, device=device)


def by_name(values) -> dict:
    """The constants by name, as Python floats (for the torch backend)."""
    return dict(alpha=values[C.H_ALPHA], beta=values[C.H_BETA], gamma=values[C.H_GAMMA],
                q=values[C.H_Q], a=values[C.H_A], log_pmin=values[C.H_LOG_PMIN],
                A_nnce=values[C.H_A_NNCE], A_nnfl=values[C.H_A_NNFL], C_pass=values[C.H_C_PASS],
                rce_a=values[C.H_RCE_A], p_floor=values[C.H_P_FLOOR], z_loss=values[C.H_Z_LOSS],
                softcap=values[C.H_SOFTCAP], label_smoothing=values[C.H_LS],
                ls_weighted=values[C.H_LS_WEIGHTED])
