"""Pure metric functions over exit traces (numpy only, vectorised).

Which node a threshold vector sends each sample to, and what that exit costs under a policy's
``heads`` mode, are defined once in :mod:`distree.policies.thresholds`; these functions summarise
given exit nodes (accuracy, drop, FLOPs, bytes, histogram). Savings are always reported against
last-exit inference (every segment, only the final head).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..models.cost import CostProfile
from ..policies.thresholds import HeadsMode, node_costs


def accuracy(correct: np.ndarray, exits: np.ndarray) -> float:
    """Fraction of samples whose exit's prediction is right. ``correct`` (n, N) bool, ``exits`` (n,)."""
    n = correct.shape[0]
    if n == 0:
        raise ValueError("accuracy of an empty trace is undefined")
    return float(correct[np.arange(n), exits].mean())


def mean_flops(cost: CostProfile, exits: np.ndarray, heads: HeadsMode | str = "visited") -> float:
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


def evaluate_exits(
    correct: np.ndarray, cost: CostProfile, exits: np.ndarray, heads: HeadsMode | str = "visited"
) -> Metrics:
    """All figures for given exit nodes. ``correct`` (n, N) bool; ``exits`` (n,) int; ``heads``: see
    :func:`distree.policies.thresholds.node_costs`."""
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
