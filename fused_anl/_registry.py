"""The loss family as data: every loss is ``alpha * ACTIVE + beta * PASSIVE``.

One table drives everything else: the reference implementations, the analytic torch
backend, the Triton kernels (which receive the two term codes as compile-time
constants), the functional API, the ``nn.Module`` classes and :func:`get_loss`.
A single-term loss is the same mechanism with the other term set to ``NONE``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .kernels._codes import (  # noqa: F401  (term codes and facts shared with the kernels)
    A_CE, A_FL, A_NCE, A_NFL, A_NONE, ACTIVE_TERMS, HYPERS, P_AEL, P_AGCE, P_AMSE, P_AUL, P_FLOOR,
    P_GCE, P_LS, P_MAE, P_NNCE, P_NNFL, P_NONE, P_RCE, PASSIVE_TERMS, RCE_A, TERMS,
    terms_of,
)


@dataclass(frozen=True)
class LossSpec:
    name: str
    active: int
    passive: int
    hyper: dict = field(default_factory=dict)  # hyperparameter -> default
    doc: str = ""
    module: str = ""

    @property
    def terms(self):
        """Its (active, passive) rows of kernels/_codes.py ``TERMS``."""
        return terms_of(self.active, self.passive)

    @property
    def focal(self) -> bool:
        return any(t.focal for t in self.terms)

    @property
    def keywords(self) -> tuple:
        kw = tuple(self.hyper)
        if self.focal:
            kw += ("detach_focal_weight",)
        return kw


def _spec(name, active, passive, module, doc, **hyper):
    return LossSpec(name, active, passive, hyper, doc, module)


_G = dict(gamma=0.5)
_PMIN = dict(p_min=1e-7)
_AB = dict(alpha=1.0, beta=1.0)

LOSSES = {
    s.name: s
    for s in [
        # active terms on their own
        _spec("ce", A_CE, P_NONE, "CELoss", "-log p_y"),
        _spec("fl", A_FL, P_NONE, "FLLoss", "-(1-p_y)^gamma log p_y (weight detached)", **_G),
        _spec("nce", A_NCE, P_NONE, "NCELoss", "log p_y / sum_k log p_k"),
        _spec("nfl", A_NFL, P_NONE, "NFLLoss", "w_y log p_y / sum_k w_k log p_k, w=(1-p)^gamma", **_G),
        # normalized negative terms (the paper's contribution)
        _spec("nnce", A_NONE, P_NNCE, "NNCELoss", "1 - v_y / sum_k v_k, v_k = A + log clamp(p_k, p_min, 1)", **_PMIN),
        _spec("nnfl", A_NONE, P_NNFL, "NNFLLoss", "1 - (A - FL_y) / (K A - sum_k FL_k)", **_G, **_PMIN),
        # passive and asymmetric baselines
        _spec("mae", A_NONE, P_MAE, "MAELoss", "1 - p_y"),
        _spec("rce", A_NONE, P_RCE, "RCELoss", "-log(1e-4) sum_{k!=y} clamp(p_k, 1e-7, 1)"),
        _spec("gce", A_NONE, P_GCE, "GCELoss", "(1 - clamp(p_y, 1e-7, 1)^q) / q", q=0.7),
        _spec("agce", A_NONE, P_AGCE, "AGCELoss", "((a+1)^q - (a+p_y)^q) / q", a=6.0, q=1.5),
        _spec("aul", A_NONE, P_AUL, "AULLoss", "((a-p_y)^q - (a-1)^q) / q", a=6.3, q=1.5),
        _spec("ael", A_NONE, P_AEL, "AELLoss", "exp(-p_y / a)", a=5.0),
        # combinations (alpha * active + beta * passive)
        _spec("sce", A_CE, P_RCE, "SCELoss", "alpha CE + beta RCE", alpha=0.1, beta=1.0),
        _spec("anl_ce", A_NCE, P_NNCE, "ANLCELoss", "alpha NCE + beta NNCE", **_AB, **_PMIN),
        _spec("anl_fl", A_NFL, P_NNFL, "ANLFLLoss", "alpha NFL + beta NNFL", **_AB, **_G, **_PMIN),
        _spec("nce_rce", A_NCE, P_RCE, "NCERCELoss", "alpha NCE + beta RCE", **_AB),
        _spec("nce_mae", A_NCE, P_MAE, "NCEMAELoss", "alpha NCE + beta MAE", **_AB),
        _spec("nfl_rce", A_NFL, P_RCE, "NFLRCELoss", "alpha NFL + beta RCE", **_AB, **_G),
        _spec("nfl_mae", A_NFL, P_MAE, "NFLMAELoss", "alpha NFL + beta MAE", **_AB, **_G),
        _spec("nce_agce", A_NCE, P_AGCE, "NCEAGCELoss", "alpha NCE + beta AGCE", **_AB, a=6.0, q=1.5),
        _spec("nce_aul", A_NCE, P_AUL, "NCEAULLoss", "alpha NCE + beta AUL", **_AB, a=6.3, q=1.5),
        _spec("nce_ael", A_NCE, P_AEL, "NCEAELLoss", "alpha NCE + beta AEL", **_AB, a=5.0),
        # Joint Asymmetric Loss (JAL; defaults: its CIFAR-10 configuration)
        _spec("amse", A_NONE, P_AMSE, "AMSELoss", "mean_k (p_k - a [k == y])^2", a=30.0),
        _spec("nce_amse", A_NCE, P_AMSE, "NCEAMSELoss", "alpha NCE + beta AMSE (JAL-CE)", **_AB,
              a=30.0),
        _spec("nfl_amse", A_NFL, P_AMSE, "NFLAMSELoss", "alpha NFL + beta AMSE (JAL-FL)", **_AB,
              **_G, a=30.0),
    ]
}


# Losses with a batch term besides their rows: ``alpha * ACTIVE + beta * PASSIVE`` per row
# (a row loss like those above, ``ROW_PARTS[name + ":rows"]``, through the same kernels)
# plus ``lamb * E``, one number per batch (fused_anl/batch_entropy.py), added once.
BATCH_LOSSES = {
    # NNCE' (p clamped to [p_min, 1 - p_min]) is computed as NNCE: the upper clamp binds
    # only where p_k > 1 - p_min, which leaves every other class below p_min (v = 0), so
    # V = v_k and NNCE' = NNCE = 0 (k = y) or 1, with a zero gradient either way
    # (docs/semantics.md; tests/test_anl_ce_er.py checks it against the two-sided reference)
    "anl_ce_er": _spec("anl_ce_er", A_NCE, P_NNCE, "ANLCEERLoss",
                       "alpha NCE + beta NNCE' (p clamped to [p_min, 1 - p_min]) + lamb E, "
                       "E = log K + sum_k q_k log q_k of the batch's class shares q",
                       **_AB, **_PMIN, lamb=1.0),
}
ROW_PARTS = {
    f"{name}:rows": LossSpec(f"{name}:rows", s.active, s.passive,
                             {k: v for k, v in s.hyper.items() if k != "lamb"},
                             f"the row part of {name}", "")
    for name, s in BATCH_LOSSES.items()
}


# What a loss call becomes with an option that changes its terms: ``ce`` with
# ``label_smoothing > 0`` is the ``ls`` term (its label part carries the class weight
# itself, so that the smoothing part is not weighted by the label's weight, as in
# F.cross_entropy).
VARIANTS = {
    "ce:ls": LossSpec("ce:ls", A_NONE, P_LS, {"label_smoothing": 0.0},
                      "-(1 - eps) w_y log p_y - (eps / K) sum_k w_k log p_k", ""),
}


def spec_of(name: str) -> LossSpec:
    """The spec of a loss of LOSSES, BATCH_LOSSES, ROW_PARTS or VARIANTS (KeyError otherwise)."""
    for table in (LOSSES, BATCH_LOSSES, ROW_PARTS, VARIANTS):
        if name in table:
            return table[name]
    raise KeyError(name)


def public_names() -> list:
    """Every loss a user can call by name (LOSSES and BATCH_LOSSES), sorted."""
    return sorted(list(LOSSES) + list(BATCH_LOSSES))


def resolve_hyper(spec: LossSpec, given: dict) -> dict:
    """Defaults filled in, unknown keys rejected, values checked. Returns floats for
    alpha, beta, gamma, q, a, p_min (the ones a loss does not use are neutral)."""
    unknown = set(given) - set(spec.hyper)
    if unknown:
        raise TypeError(
            f"{spec.name}() got unexpected keyword(s) {sorted(unknown)}; it takes {sorted(spec.hyper)}"
        )
    h = dict(spec.hyper, **given)
    out = {k: hp.neutral for k, hp in HYPERS.items()}
    if spec.active == A_NONE:
        out["alpha"] = 0.0
    if spec.passive == P_NONE:
        out["beta"] = 0.0
    for k, v in h.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if not (hasattr(v, "item") and getattr(v, "numel", lambda: 0)() == 1):
                raise TypeError(f"{spec.name}: hyperparameter {k} must be a number, got {type(v).__name__}")
            v = v.item()
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{spec.name}: hyperparameter {k}={v} must be finite")
        out[k] = v
    for term in spec.terms:
        msg = term.check(out) if term.check else None
        if msg:
            raise ValueError(f"{spec.name}: {msg}")
    return out
