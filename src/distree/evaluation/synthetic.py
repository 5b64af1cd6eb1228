"""Synthetic exit traces with known structure, for tests and for checking calibration.

Each sample has a difficulty; exit i's logits put a margin on the true class that grows with
depth and shrinks with difficulty, plus noise shared across exits (so consecutive exits agree
on easy samples) and noise of its own. Features are a fixed random projection of the logits.
"""

from __future__ import annotations

import numpy as np

from ..models.cost import CostProfile
from ..trace.format import Trace


def synthetic_trace(
    n: int = 2000,
    num_nodes: int = 4,
    num_classes: int = 10,
    *,
    feature_dim: int = 16,
    seed: int = 0,
    segment_flops: list[int] | None = None,
    head_flops: int = 1000,
    hop_bytes: int = 4096,
) -> Trace:
    """A trace of ``n`` samples and ``num_nodes`` exits (last-exit accuracy around 85-90%)."""
    if n < 1 or num_nodes < 1 or num_classes < 2:
        raise ValueError("synthetic_trace needs n >= 1, num_nodes >= 1 and num_classes >= 2")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, size=n)
    difficulty = rng.gamma(2.0, 0.5, size=n)
    shared = rng.normal(size=(n, num_classes))
    depth = np.linspace(1.0, 2.6, num_nodes)
    logits = np.empty((n, num_nodes, num_classes), dtype=np.float32)
    for i in range(num_nodes):
        own = rng.normal(size=(n, num_classes))
        margin = 3.2 * depth[i] / (0.6 + difficulty)
        z = 1.1 * shared + (1.2 / depth[i]) * own
        z[np.arange(n), y] += margin
        logits[:, i] = z
    proj = rng.normal(size=(num_classes, feature_dim)) / np.sqrt(num_classes)
    feats = [np.maximum(logits[:, i] @ proj, 0).astype(np.float32) for i in range(num_nodes)]
    seg = segment_flops or [1_000_000] * num_nodes
    cost = CostProfile(
        segment_flops=list(seg),
        exit_flops=[head_flops] * num_nodes,
        hop_bytes=[hop_bytes] * (num_nodes - 1),
    )
    return Trace(
        logits=logits,
        features=feats,
        labels=y.astype(np.int64),
        cost=cost,
        meta={"dataset": "synthetic-trace", "split": "synthetic", "model": "none", "seed": seed},
    )
