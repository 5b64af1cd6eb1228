"""Shared, vectorised measures on exit outputs (numpy only).

Every function maps (B, K) or (B, F) arrays to (B,) float64. Probability measures take softmax
outputs; feature measures take exit feature vectors.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_TINY = 1e-12


def max_prob(p: np.ndarray) -> np.ndarray:
    """Top softmax probability (SDN / MSDNet confidence)."""
    return p.max(axis=-1).astype(np.float64)


def norm_entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy divided by log K, in [0, 1] (BranchyNet)."""
    k = p.shape[-1]
    p64 = p.astype(np.float64)
    h = -(p64 * np.log(np.clip(p64, _TINY, 1.0))).sum(axis=-1)
    return h / np.log(k) if k > 1 else np.zeros_like(h)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance 0.5 * ||p - q||_1, in [0, 1]."""
    return 0.5 * np.abs(p.astype(np.float64) - q.astype(np.float64)).sum(axis=-1)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) in nats."""
    p64 = np.clip(p.astype(np.float64), _TINY, 1.0)
    q64 = np.clip(q.astype(np.float64), _TINY, 1.0)
    return (p64 * (np.log(p64) - np.log(q64))).sum(axis=-1)


def js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence divided by log 2, in [0, 1]."""
    m = 0.5 * (p.astype(np.float64) + q.astype(np.float64))
    return (0.5 * kl(p, m) + 0.5 * kl(q, m)) / np.log(2.0)


def cosine_sim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in [-1, 1] (0 where a vector is zero)."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    num = (a64 * b64).sum(axis=-1)
    return np.where(den > _TINY, num / np.maximum(den, _TINY), 0.0)


def rel_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / (||a|| + ||b||), in [0, 1]: a scale-free feature difference."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    den = np.linalg.norm(a64, axis=-1) + np.linalg.norm(b64, axis=-1)
    return np.where(den > _TINY, np.linalg.norm(a64 - b64, axis=-1) / np.maximum(den, _TINY), 0.0)


def sort_rows(f: np.ndarray) -> np.ndarray:
    """Each row's entries in ascending order, float32: the quantile function :func:`quantile_w2` compares."""
    return np.sort(np.asarray(f, dtype=np.float32), axis=-1)


@lru_cache(maxsize=64)
def _refinement(fa: int, fb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common refinement of the quantile grids {k/fa} and {k/fb}: interval widths and, per interval,
    the entry of each sorted vector that the quantile function takes there."""
    edges = np.union1d(np.arange(fa + 1) / fa, np.arange(fb + 1) / fb)
    mids = 0.5 * (edges[:-1] + edges[1:])
    ia = np.minimum((mids * fa).astype(np.int64), fa - 1)
    ib = np.minimum((mids * fb).astype(np.int64), fb - 1)
    return np.diff(edges), ia, ib


def quantile_w2(a_sorted: np.ndarray, b_sorted: np.ndarray) -> np.ndarray:
    """W2(a, b) / (rms(a) + rms(b)), in [0, 1]: a feature difference for vectors of any widths.

    W2 is the 2-Wasserstein distance between the empirical distributions of the entries of ``a``
    (Fa values) and of ``b`` (Fb values): the L2 distance between their quantile functions, exact
    on the common refinement of the two step functions. ``rms`` is the root mean square of a
    vector's entries (its W2 distance to 0), so the ratio is scale-free and at most 1 by the
    triangle inequality. For equal widths it equals ``||sort(a) - sort(b)|| / (||a|| + ||b||)``:
    the relative L2 distance (:func:`rel_l2`) under the best matching of the entries, i.e. the
    smallest ``rel_l2`` over every ordering of either vector's units. Rows must be sorted
    ascending (:func:`sort_rows`). (B, Fa), (B, Fb) → (B,).
    """
    a64 = np.asarray(a_sorted, dtype=np.float64)
    b64 = np.asarray(b_sorted, dtype=np.float64)
    w, ia, ib = _refinement(a64.shape[-1], b64.shape[-1])
    d2 = ((a64[:, ia] - b64[:, ib]) ** 2 * w).sum(axis=-1)
    den = np.sqrt((a64 * a64).mean(axis=-1)) + np.sqrt((b64 * b64).mean(axis=-1))
    return np.where(den > _TINY, np.sqrt(d2) / np.maximum(den, _TINY), 0.0)


def check_features(name: str, node: int, features: np.ndarray | None, batch: int) -> np.ndarray:
    """Validate a node's feature matrix for a policy that needs features."""
    if features is None:
        raise ValueError(f"{name}: node {node} got no feature vectors; this policy needs the exit features")
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] != batch:
        raise ValueError(f"{name}: features at node {node} must be ({batch}, F), got shape {f.shape}")
    return f
