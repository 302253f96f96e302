"""Every fact about the loss terms, in one table, shared by the kernels and the Python API.

Plain Python (no Triton import) so the API can use it on machines without Triton.
A loss is ``alpha * ACTIVE + beta * PASSIVE``; the kernels get both codes as
compile-time constants. A term's math is one unit in each backend, found under the
term's ``name`` (kernels/_terms.py ``<name>_elem``/``<name>_epi``, their torch twins of
the same names in fused_anl/_torch_terms.py, and the definition in fused_anl/reference.py);
everything else about it is its row of :data:`TERMS` below. docs/adding-a-loss.md lists
the places a new term touches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

A_NONE, A_CE, A_FL, A_NCE, A_NFL = 0, 1, 2, 3, 4
(P_NONE, P_NNCE, P_NNFL, P_MAE, P_RCE, P_GCE, P_AGCE, P_AUL, P_AEL,
 P_AMSE, P_LS) = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10

# Hyperparameter vector, in the compute dtype, read by the kernels.
(H_ALPHA, H_BETA, H_GAMMA, H_Q, H_A, H_LOG_PMIN, H_A_NNCE, H_A_NNFL, H_C_PASS, H_RCE_A,
 H_P_FLOOR, H_Z_LOSS, H_SOFTCAP, H_LS, H_LS_WEIGHTED) = range(15)
H_SIZE = 15
# Label smoothing with class weights: the K class weights follow the vector (slots
# H_SIZE .. H_SIZE + K - 1), read per element by the ``ls`` term; H_LS_WEIGHTED is 1 then.

# Per-row statistics as they travel between launches (split rows, class-parallel shards):
# stats1 = (max, sum exp(z - max), sum (z - max), #present); stats2 = the lse-dependent
# sums (A1, EA, B1, EB, BC) of kernels/_terms.py ``elementwise``.
STATS1 = 4
STATS2 = 5

# RCE's constant: -log(clamp(onehot_k, 1e-4, 1)) for k != y.
RCE_A = -math.log(1e-4)
# The clamp floor on probabilities used by RCE and GCE (fixed by the published code).
P_FLOOR = 1e-7


@dataclass(frozen=True)
class Hyper:
    """A user-facing hyperparameter: its slot in the vector (None: only derived
    constants reach the kernels), the value a loss that does not take it computes with
    (neutral), and its docstring line (``{v}``: the default)."""

    slot: Optional[int]
    neutral: float
    doc: str


HYPERS: Dict[str, Hyper] = {
    "alpha": Hyper(H_ALPHA, 1.0, "alpha (float): weight of the active term. Default: {v}."),
    "beta": Hyper(H_BETA, 1.0, "beta (float): weight of the passive term. Default: {v}."),
    "gamma": Hyper(H_GAMMA, 0.0, "gamma (float): focusing parameter of the focal weight "
                   "``(1 - p)^gamma``, >= 0. Default: {v}."),
    "q": Hyper(H_Q, 1.0, "q (float): exponent, > 0. Default: {v}."),
    "a": Hyper(H_A, 1.0, "a (float): the asymmetric loss's offset (AUL: > 1; AGCE, AEL: > 0; "
               "AMSE: the label's target value, any finite number). Default: {v}."),
    "p_min": Hyper(None, 1e-7, "p_min (float): probability floor of the normalized "
                   "negative term, in (0, 1). Default: {v}."),  # kernels read log p_min
    "label_smoothing": Hyper(H_LS, 0.0, "label_smoothing (float): as ``F.cross_entropy``'s, in "
                             "[0, 1]: the target is ``(1 - eps)`` on the label plus ``eps / K`` on "
                             "every class. Default: {v}."),
    # options of every loss, not a term's (fused_anl/functional.py): the z-loss coefficient
    # and the logit soft cap (0: none)
    "z_loss": Hyper(H_Z_LOSS, 0.0, "z_loss (float): coefficient of ``lse^2``, added to each "
                    "sample's loss. Default: {v}."),
    "logit_softcap": Hyper(H_SOFTCAP, 0.0, "logit_softcap (float): ``cap``, logits replaced by "
                           "``cap * tanh(z / cap)`` (0: no cap). Default: {v}."),
    # not a term's: the weight of ANL-CE-ER's batch entropy term (fused_anl/batch_entropy.py)
    "lamb": Hyper(None, 0.0, "lamb (float): weight of the batch entropy term E (one number "
                  "per batch, added once). Default: {v}."),
}


@dataclass(frozen=True)
class Term:
    """One active or passive term.

    - ``hyper``: the hyperparameters it reads (besides alpha/beta).
    - ``stats2``: its row sums need the final lse, i.e. a second reduction over the row.
    - ``per_element``: it has an elementwise gradient factor ``e_j`` (a ``<name>_elem``
      unit); without one the term depends on ``p_y`` (and stats1) alone.
    - ``separate_p``: its gradient's p part and e part may nearly cancel (AMSE, label
      smoothing), so they are added together before the other term's parts; a pair of
      per-element terms without it shares one p-coefficient (kernels/row_loss.py
      ``_grad_coefs``).
    - ``p_select``: its e is p itself on a set of classes and 0 elsewhere (RCE: p on the
      classes in Q), so its gradient is ``p_j`` times one of two coefficients: its
      epilogue's c2 off the set and, as its c3, the coefficient on the set (RCE:
      ``c2 + c3 = A4 (1 - Q)`` of the generic form, computed from the classes off the
      set where Q is near 1, which ``-A4 Q + A4`` would lose to cancellation). The
      kernels write such a term's part of the gradient as ``p_j`` times a select (one
      multiply, no cancellation); only a passive term may be one.
    - ``e_present``: its e is 1 on present classes and 0 on absent ones (NCE): the
      single-block path recomputes it from the logits for the gradient instead of
      holding it across the row's reductions (kernels/row_loss.py ``_grad_combine``).
    - ``focal``: it has a focal weight (``detach_focal_weight`` applies).
    - ``check``: ``h -> error message or None`` on the resolved hyperparameters.
    - ``constants``: ``h -> {slot: value}``, derived constants in double precision.
    """

    code: int
    name: str
    kind: str  # "active" or "passive"
    doc: str
    hyper: Tuple[str, ...] = ()
    stats2: bool = False
    per_element: bool = False
    separate_p: bool = False
    p_select: bool = False
    e_present: bool = False
    focal: bool = False
    check: Optional[Callable[[dict], Optional[str]]] = None
    constants: Callable[[dict], dict] = field(default=lambda h: {})


def _gamma_ok(h):
    return None if h["gamma"] >= 0.0 else f"gamma must be >= 0, got {h['gamma']}"


def _pmin_ok(h):
    return None if 0.0 < h["p_min"] < 1.0 else f"p_min must lie in (0, 1), got {h['p_min']}"


def _all(*checks):
    def check(h):
        for c in checks:
            msg = c(h)
            if msg:
                return msg
        return None
    return check


def _q_ok(h):
    return None if h["q"] > 0.0 else f"q must be > 0, got {h['q']}"


def _a_pos(h):
    return None if h["a"] > 0.0 else f"a must be > 0, got {h['a']}"


def _a_gt1(h):
    return None if h["a"] > 1.0 else f"a must be > 1 (AUL uses (a - 1)^q), got {h['a']}"


def _nnce_constants(h):
    return {H_LOG_PMIN: math.log(h["p_min"]), H_A_NNCE: -math.log(h["p_min"])}


def _nnfl_constants(h):
    pm, g = h["p_min"], h["gamma"]
    return {H_LOG_PMIN: math.log(pm), H_A_NNFL: -((1.0 - pm) ** g) * math.log(pm)}


_T = Term
TERMS: Tuple[Term, ...] = tuple([
    _T(A_NONE, "none", "active", "no active term"),
    _T(A_CE, "ce", "active", "-log p_y"),
    _T(A_FL, "fl", "active", "-(1 - p_y)^gamma log p_y", ("gamma",), focal=True, check=_gamma_ok),
    _T(A_NCE, "nce", "active", "log p_y / sum_k log p_k", per_element=True, e_present=True),
    _T(A_NFL, "nfl", "active", "w_y log p_y / sum_k w_k log p_k, w = (1 - p)^gamma", ("gamma",),
       stats2=True, per_element=True, focal=True, check=_gamma_ok),
    _T(P_NONE, "none", "passive", "no passive term"),
    _T(P_NNCE, "nnce", "passive", "1 - v_y / sum_k v_k, v_k = A + log clamp(p_k, p_min, 1)",
       ("p_min",), stats2=True, per_element=True, check=_pmin_ok, constants=_nnce_constants),
    _T(P_NNFL, "nnfl", "passive", "1 - (A - FL_y) / (K A - sum_k FL_k)", ("gamma", "p_min"),
       stats2=True, per_element=True, focal=True, check=_all(_pmin_ok, _gamma_ok),
       constants=_nnfl_constants),
    _T(P_MAE, "mae", "passive", "1 - p_y"),
    _T(P_RCE, "rce", "passive", "-log(1e-4) sum_{k!=y} clamp(p_k, 1e-7, 1)", stats2=True,
       per_element=True, p_select=True,
       constants=lambda h: {H_RCE_A: RCE_A, H_P_FLOOR: P_FLOOR}),
    _T(P_GCE, "gce", "passive", "(1 - clamp(p_y, 1e-7, 1)^q) / q", ("q",), check=_q_ok,
       constants=lambda h: {H_P_FLOOR: P_FLOOR}),
    _T(P_AGCE, "agce", "passive", "((a+1)^q - (a+p_y)^q) / q", ("q", "a"),
       check=_all(_q_ok, _a_pos), constants=lambda h: {H_C_PASS: (h["a"] + 1.0) ** h["q"]}),
    _T(P_AUL, "aul", "passive", "((a-p_y)^q - (a-1)^q) / q", ("q", "a"),
       check=_all(_q_ok, _a_gt1), constants=lambda h: {H_C_PASS: (h["a"] - 1.0) ** h["q"]}),
    _T(P_AEL, "ael", "passive", "exp(-p_y / a)", ("a",), check=_a_pos),
    _T(P_AMSE, "amse", "passive", "mean_k (p_k - a [k == y])^2 over the K present classes",
       ("a",), stats2=True, per_element=True, separate_p=True),
    # CE with label smoothing (``ce``'s ``label_smoothing``; the loss ``ce:ls`` of the registry)
    _T(P_LS, "ls", "passive", "-(1 - eps) w_y log p_y - (eps / K) sum_k w_k log p_k (w: class "
       "weights or 1)", ("label_smoothing",), stats2=True, per_element=True, separate_p=True,
       check=lambda h: None if 0.0 <= h["label_smoothing"] <= 1.0 else
       f"label_smoothing must lie in [0, 1], got {h['label_smoothing']}"),
])
# by code (active and passive codes overlap: two tables)
ACTIVE_TERMS: Dict[int, Term] = {t.code: t for t in TERMS if t.kind == "active"}
PASSIVE_TERMS: Dict[int, Term] = {t.code: t for t in TERMS if t.kind == "passive"}


def terms_of(active: int, passive: int) -> Tuple[Term, Term]:
    """The (active, passive) rows of a loss."""
    return ACTIVE_TERMS[active], PASSIVE_TERMS[passive]


def has_elementwise(active: int, passive: int) -> Tuple[bool, bool]:
    """Whether the active / passive term has an elementwise gradient factor ``e_j`` (the
    kernels may skip ``c3 * e_j`` for a term without one)."""
    return ACTIVE_TERMS[active].per_element, PASSIVE_TERMS[passive].per_element


def one_p_coefficient(active: int, passive: int) -> bool:
    """Both terms have an elementwise factor and neither needs its p part kept apart
    (``separate_p``): the gradient is ``(c2a + c2b) p_j + c3a ea_j + c3b eb_j``."""
    a, p = terms_of(active, passive)
    return (a.per_element and p.per_element and not a.separate_p and not p.separate_p)


def e_is_present(active: int, passive: int) -> bool:
    """The active term's e is the present-class indicator (``e_present``; no passive term
    is one)."""
    assert not PASSIVE_TERMS[passive].e_present, "only an active term may be e_present"
    return ACTIVE_TERMS[active].e_present


def selects_p(active: int, passive: int) -> bool:
    """The passive term's gradient is ``p_j`` times a select of two coefficients
    (``p_select``; no active term is one)."""
    assert not ACTIVE_TERMS[active].p_select, "only a passive term may be p_select"
    return PASSIVE_TERMS[passive].p_select


def needs_stats2(active: int, passive: int) -> bool:
    """Terms whose row sums need the final lse (a second reduction over the row)."""
    return ACTIVE_TERMS[active].stats2 or PASSIVE_TERMS[passive].stats2
