"""Pure metric functions over exit traces (numpy only, vectorised).

Cost accounting: a request that exits at node i paid segments 0..i and the exit heads 0..i (every
visited node evaluates its head to decide) — :meth:`CostProfile.exit_cost`. The baseline is
last-exit inference, which runs every segment and only the final head —
:meth:`CostProfile.last_exit_cost`. Savings are always reported against that baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..models.cost import CostProfile


def exit_nodes(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Node each sample exits at: the first i with ``scores[:, i] >= thresholds[i]``; the last node otherwise.

    ``scores`` (n, N), ``thresholds`` (N,) → (n,) int64.
    """
    scores = np.asarray(scores)
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if scores.ndim != 2 or scores.shape[1] != th.shape[0]:
        raise ValueError(f"scores {scores.shape} and thresholds {th.shape} do not match: need (n, N) and (N,)")
    hit = scores >= th[None, :]
    hit[:, -1] = True
    return hit.argmax(axis=1).astype(np.int64)


def relative_exit_cost(cost: CostProfile) -> np.ndarray:
    """FLOPs of exiting at node i relative to last-exit inference, (N,)."""
    return cost.exit_cost() / cost.last_exit_cost()


def accuracy(correct: np.ndarray, exits: np.ndarray) -> float:
    """Fraction of samples whose exit's prediction is right. ``correct`` (n, N) bool, ``exits`` (n,)."""
    n = correct.shape[0]
    if n == 0:
        raise ValueError("accuracy of an empty trace is undefined")
    return float(correct[np.arange(n), exits].mean())


def node_costs(cost: CostProfile, heads: str = "visited") -> np.ndarray:
    """FLOPs of a request that exits at node i, (N,).

    ``heads="visited"``: every visited node evaluated its exit head (any early-exit policy);
    ``heads="final"``: only the final head ran (last-exit inference: no early-exit decisions).
    """
    if heads == "visited":
        return cost.exit_cost()
    if heads == "final":
        c = np.cumsum(np.asarray(cost.segment_flops, dtype=np.float64))
        c[-1] += cost.exit_flops[-1]
        return c
    raise ValueError(f"heads must be 'visited' or 'final', got {heads!r}")


def mean_flops(cost: CostProfile, exits: np.ndarray, heads: str = "visited") -> float:
    """Mean FLOPs per request (segments up to the exit + the heads evaluated on the way)."""
    return float(node_costs(cost, heads)[exits].mean())


def mean_bytes(cost: CostProfile, exits: np.ndarray) -> float:
    """Mean bytes sent between nodes per request (activations forwarded before the exit)."""
    return float(cost.bytes_to_exit()[exits].mean())


def exit_histogram(exits: np.ndarray, num_nodes: int) -> np.ndarray:
    """Fraction of requests answered at each node, (N,)."""
    exits = np.asarray(exits)
    if exits.size == 0:
        return np.zeros(num_nodes)
    return np.bincount(exits, minlength=num_nodes)[:num_nodes] / exits.size


@dataclass
class Metrics:
    """One policy's figures on one trace. Accuracies in [0, 1]; ``drop_pp`` in percentage points."""

    accuracy: float
    last_exit_accuracy: float
    drop_pp: float  # (last-exit accuracy - accuracy) * 100; negative = better than last exit
    mean_flops: float
    last_exit_flops: float
    rel_flops: float  # mean FLOPs / last-exit FLOPs
    saving: float  # 1 - rel_flops
    mean_bytes: float
    last_exit_bytes: float
    exit_hist: list[float]
    num_samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_exits(correct: np.ndarray, cost: CostProfile, exits: np.ndarray, heads: str = "visited") -> Metrics:
    """All figures for given exit nodes. ``correct`` (n, N) bool; ``exits`` (n,) int; ``heads``: :func:`node_costs`."""
    correct = np.asarray(correct, dtype=bool)
    exits = np.asarray(exits, dtype=np.int64)
    n, nn_ = correct.shape
    if exits.shape != (n,):
        raise ValueError(f"exits must be ({n},), got {exits.shape}")
    if n and (exits.min() < 0 or exits.max() >= nn_):
        raise ValueError(f"exit nodes must lie in [0, {nn_ - 1}]")
    acc = accuracy(correct, exits)
    last_acc = float(correct[:, -1].mean())
    flops = mean_flops(cost, exits, heads)
    base = cost.last_exit_cost()
    return Metrics(
        accuracy=acc,
        last_exit_accuracy=last_acc,
        drop_pp=(last_acc - acc) * 100.0,
        mean_flops=flops,
        last_exit_flops=base,
        rel_flops=flops / base,
        saving=1.0 - flops / base,
        mean_bytes=mean_bytes(cost, exits),
        last_exit_bytes=float(cost.bytes_to_exit()[-1]),
        exit_hist=exit_histogram(exits, nn_).tolist(),
        num_samples=int(n),
    )


def last_exit_metrics(correct: np.ndarray, cost: CostProfile) -> Metrics:
    """The baseline's figures: every request runs to the last node."""
    n, nn_ = np.asarray(correct).shape
    return evaluate_exits(correct, cost, np.full(n, nn_ - 1, dtype=np.int64), heads="final")
