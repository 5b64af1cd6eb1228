"""What a threshold vector means, and what the resulting exits cost (numpy only).

One definition shared by live nodes (:meth:`ExitPolicy.decide`), offline evaluation, calibration and
the simulator:

- **Exit rule.** A request exits at the first node ``i`` whose score reaches its threshold,
  ``score[i] >= thresholds[i]``; the last node always answers, whatever its threshold.
  ``+inf`` never exits early, ``-inf`` always exits.
- **Cost of an exit** (FLOPs of a request answered at node ``i``), by a policy's ``heads`` mode:

  - ``"visited"``: every visited node evaluated its exit head to decide: segments ``0..i`` plus
    heads ``0..i`` (any early-exit policy; :meth:`CostProfile.exit_cost`);
  - ``"final"``: no early-exit decisions, so only the head of the node that answers runs:
    segments ``0..i`` plus head ``i`` (last-exit inference; it answers at the last node, or
    earlier only when a deadline or a failure forces it).

  Relative costs divide by the baseline, last-exit inference (every segment and only the final
  head, :meth:`CostProfile.last_exit_cost`); savings are always reported against it.

Cost profiles are duck-typed (``segment_flops``, ``exit_flops``, ``last_exit_cost()``), so this
module needs nothing beyond numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

HeadsMode = Literal["visited", "final"]
HEADS_MODES: tuple[str, ...] = ("visited", "final")


class _Costs(Protocol):
    @property
    def segment_flops(self) -> Sequence[int]: ...
    @property
    def exit_flops(self) -> Sequence[int]: ...

    def last_exit_cost(self) -> float: ...


def exit_mask(scores: np.ndarray, thresholds: np.ndarray, node: int | None = None) -> np.ndarray:
    """Where the exit rule answers: ``scores >= thresholds``, and always at the last node.

    ``node=None``: ``scores`` (n, N) of every node → (n, N) bool whose last column is all True.
    ``node=i``: ``scores`` (B,) of B requests at node ``i`` → (B,) bool.
    """
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    s = np.asarray(scores)
    if node is None:
        if s.ndim != 2 or s.shape[1] != th.shape[0]:
            raise ValueError(f"scores {s.shape} and thresholds {th.shape} do not match: need (n, N) and (N,)")
        hit = s >= th[None, :]
        hit[:, -1] = True
        return hit
    if not 0 <= node < th.shape[0]:
        raise ValueError(f"node {node} out of range for {th.shape[0]} thresholds")
    if node == th.shape[0] - 1:
        return np.ones(s.shape, dtype=bool)
    return s >= th[node]


def exit_nodes(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Node each sample exits at: the first i with ``scores[:, i] >= thresholds[i]``; the last node otherwise.

    ``scores`` (n, N), ``thresholds`` (N,) → (n,) int64.
    """
    return exit_mask(scores, thresholds).argmax(axis=1).astype(np.int64)


def node_costs(cost: _Costs, heads: HeadsMode | str = "visited") -> np.ndarray:
    """FLOPs of a request that exits at node i, (N,), under the ``heads`` mode (see the module docstring)."""
    seg = np.cumsum(np.asarray(cost.segment_flops, dtype=np.float64))
    head = np.asarray(cost.exit_flops, dtype=np.float64)
    if heads == "visited":
        return seg + np.cumsum(head)
    if heads == "final":
        return seg + head
    raise ValueError(f"heads must be one of {', '.join(HEADS_MODES)}, got {heads!r}")


def relative_costs(cost: _Costs, heads: HeadsMode | str = "visited") -> np.ndarray:
    """FLOPs of exiting at node i relative to last-exit inference, (N,)."""
    return node_costs(cost, heads) / cost.last_exit_cost()
