"""Label noise exactly as the published experiments make it.

For a transition matrix ``T`` and ``n_i`` samples of class ``i``, exactly
``floor(T[i, j] * n_i)`` samples of class ``i`` are flipped to each ``j != i``, drawn
without replacement from a seeded generator (a sample is flipped at most once and
never to its own class), so realized rates are under the nominal one: slightly on
large datasets (MNIST, CIFAR), but by a lot when ``T[i, j] * n_i`` is small. Symmetric
noise spreads the rate over ``K - 1`` target classes, so 100 classes with 100 samples
each at rate 0.4 give ``floor(0.4 / 99 * 100) = 0`` flips per pair: no noise at all.
The generators then warn (``UserWarning`` naming the nominal and realized rates)
whenever the realized rate is below ``SHORTFALL_WARNING`` (0.9) times the nominal one.

The functions take and return labels as a torch tensor or a NumPy array (the same
kind as given) and never modify their input.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

# Published asymmetric mappings (true class -> noisy class).
ASYMMETRIC_MAPPINGS = {
    "mnist": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},  # truck->automobile, bird->airplane, cat<->dog, deer->horse
    "cifar100": {j: (j // 5) * 5 + (j % 5 + 1) % 5 for j in range(100)},  # next in each block of 5
}
ASYMMETRIC_MAPPINGS["digits"] = ASYMMETRIC_MAPPINGS["mnist"]  # same classes as MNIST

# Warn when the per-pair floor leaves less than this fraction of the nominal noise.
SHORTFALL_WARNING = 0.9


def _as_numpy(labels):
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        arr, template = labels.detach().cpu().numpy(), labels
    else:
        arr, template = np.asarray(labels), None
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence of class indices, got shape {arr.shape}")
    return arr.astype(np.int64), template


def _like(arr, template, dtype=None):
    if template is not None:
        return torch.as_tensor(arr, device=template.device,
                               dtype=dtype or template.dtype)
    return arr if dtype is None else arr.astype(bool)


def symmetric_transition(rate: float, num_classes: int) -> np.ndarray:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must lie in [0, 1), got {rate}")
    t = np.full((num_classes, num_classes), rate / (num_classes - 1))
    np.fill_diagonal(t, 1.0 - rate)
    return t


def asymmetric_transition(rate: float, mapping, num_classes: int) -> np.ndarray:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must lie in [0, 1), got {rate}")
    t = np.eye(num_classes)
    for src, dst in mapping.items():
        if not (0 <= src < num_classes and 0 <= dst < num_classes):
            raise ValueError(f"mapping {src}->{dst} is outside [0, {num_classes})")
        if src == dst:
            raise ValueError(f"mapping sends class {src} to itself")
        t[src, src], t[src, dst] = 1.0 - rate, rate
    return t


def apply_transition(labels, transition, seed: int = 0, *, kind: str = "transition"):
    """Flip exactly ``floor(T[i, j] * n_i)`` samples of each class ``i`` to each ``j != i``.

    Args:
        labels (Tensor or ndarray): 1-D integer class indices in ``[0, K)``.
        transition (ndarray): ``(K, K)`` row-stochastic matrix ``T``.
        seed (int): seed of the generator that picks which samples flip.
        kind (str): how the noise is named in the warning.

    Returns:
        ``(noisy_labels, flipped_mask)``, of the same kind (tensor or array) as ``labels``.

    Warns:
        UserWarning: when the realized rate is below ``SHORTFALL_WARNING`` times the
        nominal rate ``sum_i n_i (1 - T[i, i]) / n`` (the floors dropped most of it).
    """
    y, template = _as_numpy(labels)
    k = transition.shape[0]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k})")
    rng = np.random.default_rng(seed)
    noisy = y.copy()
    for i in range(k):
        idx = np.flatnonzero(y == i)
        rng.shuffle(idx)  # without replacement: consecutive blocks of one permutation
        start = 0
        for j in range(k):
            if j == i:
                continue
            count = int(np.floor(transition[i, j] * len(idx) + 1e-9))
            noisy[idx[start:start + count]] = j
            start += count
    flipped = noisy != y
    if y.size:
        counts = np.bincount(y, minlength=k)
        nominal = float((counts * (1.0 - np.diag(transition))).sum() / y.size)
        realized = float(flipped.mean())
        if nominal > 0 and realized < SHORTFALL_WARNING * nominal:
            warnings.warn(
                f"{kind} noise: nominal rate {nominal:.3g}, realized rate {realized:.3g}. The "
                f"published recipe flips floor(T[i, j] * n_i) samples per (class i, class j) "
                f"pair, and with {y.size} samples over {k} classes most of those floors are "
                f"small; use more samples per class, or report the realized rate.",
                UserWarning, stacklevel=3)
    return _like(noisy, template), _like(flipped, template, dtype=torch.bool)


def symmetric_noise(labels, rate: float, num_classes: int, seed: int = 0):
    """Symmetric label noise: each class flips to every other class at ``rate / (K-1)``.

    Args:
        labels (Tensor or ndarray): 1-D integer class indices in ``[0, num_classes)``.
        rate (float): nominal noise rate in ``[0, 1)``.
        num_classes (int): ``K``.
        seed (int): seed of the generator that picks which samples flip.

    Returns:
        ``(noisy_labels, flipped_mask)``, of the same kind (tensor or array) as ``labels``.

    Exactly ``floor(rate / (K-1) * n_i)`` samples of class ``i`` go to each other class,
    so the realized rate is below ``rate``; with few samples per class it can be far
    below (100 classes x 100 samples at 0.4 gives 0.0), and then a ``UserWarning``
    names both rates.
    """
    return apply_transition(labels, symmetric_transition(rate, num_classes), seed,
                            kind="symmetric")


def asymmetric_noise(labels, rate: float, mapping, seed: int = 0, num_classes: int | None = None):
    """Asymmetric (class-dependent) label noise: class ``i`` flips to ``mapping[i]``.

    Args:
        labels (Tensor or ndarray): 1-D integer class indices.
        rate (float): nominal rate in ``[0, 1)`` for each mapped class (the overall rate
            is lower: unmapped classes never flip).
        mapping (dict or str): ``{true: noisy}``, or a preset name (``mnist``, ``digits``,
            ``cifar10``, ``cifar100``).
        seed (int): seed of the generator that picks which samples flip.
        num_classes (int, optional): ``K``; by default ``max(labels) + 1``.

    Returns:
        ``(noisy_labels, flipped_mask)``, of the same kind (tensor or array) as ``labels``.

    Exactly ``floor(rate * n_i)`` samples of each mapped class flip; a ``UserWarning``
    names the nominal and realized rates when the floors drop more than 10% of the noise.
    """
    if isinstance(mapping, str):
        if mapping not in ASYMMETRIC_MAPPINGS:
            raise ValueError(f"unknown mapping {mapping!r}; presets: {sorted(ASYMMETRIC_MAPPINGS)}")
        mapping = ASYMMETRIC_MAPPINGS[mapping]
    y, _ = _as_numpy(labels)
    k = num_classes if num_classes is not None else (int(y.max()) + 1 if y.size else 0)
    if k < 2:
        raise ValueError(f"need at least 2 classes (pass num_classes), got {k}")
    return apply_transition(labels, asymmetric_transition(rate, mapping, k), seed,
                            kind="asymmetric")


def noise_transition(clean, noisy, num_classes: int) -> np.ndarray:
    """Realized transition matrix: row i is the distribution of noisy labels of class i."""
    c, _ = _as_numpy(clean)
    n, _ = _as_numpy(noisy)
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (c, n), 1)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def realized_noise_rate(clean, noisy) -> float:
    c, _ = _as_numpy(clean)
    n, _ = _as_numpy(noisy)
    return float((c != n).mean()) if c.size else 0.0
