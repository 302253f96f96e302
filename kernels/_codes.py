"""Term codes and hyperparameter-vector layout shared by the kernels and the Python API.

Plain Python (no Triton import) so the API can use them on machines without Triton.
A loss is ``alpha * ACTIVE + beta * PASSIVE``; the kernels get both codes as
compile-time constants.
"""
A_NONE, A_CE, A_FL, A_NCE, A_NFL = 0, 1, 2, 3, 4
P_NONE, P_NNCE, P_NNFL, P_MAE, P_RCE, P_GCE, P_AGCE, P_AUL, P_AEL = 0, 1, 2, 3, 4, 5, 6, 7, 8

# Hyperparameter vector, in the compute dtype, read by the kernels.
(H_ALPHA, H_BETA, H_GAMMA, H_Q, H_A, H_LOG_PMIN, H_A_NNCE, H_A_NNFL, H_C_PASS, H_RCE_A,
 H_P_FLOOR) = range(11)
H_SIZE = 11

# Per-row statistics as they travel between launches (split rows, class-parallel shards):
# stats1 = (max, sum exp(z - max), sum (z - max), #present); stats2 = the lse-dependent
# sums (A1, EA, B1, EB, BC) of kernels/_terms.py ``elementwise``.
STATS1 = 4
STATS2 = 5


def needs_stats2(active: int, passive: int) -> bool:
    """Terms whose row sums need the final lse (a second reduction over the row)."""
    return active == A_NFL or passive in (P_NNCE, P_NNFL, P_RCE)
