"""Split an ordered list of blocks into contiguous node segments.

Balanced by FLOPs (equal work per node) or by relative device speeds (node k gets work in
proportion to speed k): both minimise the slowest node's time ``max_k work_k / speed_k`` by an
exact dynamic programme over block boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def partition_blocks(costs: Sequence[float], num_nodes: int, speeds: Sequence[float] | None = None) -> list[int]:
    """Return the block index where each node's segment starts (len ``num_nodes``, first is 0).

    Minimises ``max_k (sum of block costs of node k) / speeds[k]`` over contiguous, non-empty
    segments. Raises ``ValueError`` with the fix when the split cannot work.
    """
    m = len(costs)
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if num_nodes > m:
        raise ValueError(
            f"cannot split {m} blocks over {num_nodes} nodes: every node needs at least one block; "
            f"use at most {m} nodes or a backbone with more blocks"
        )
    if speeds is None:
        speeds = [1.0] * num_nodes
    if len(speeds) != num_nodes:
        raise ValueError(f"speeds has {len(speeds)} entries but there are {num_nodes} nodes; give one per node")
    if any(not np.isfinite(s) or s <= 0 for s in speeds):
        raise ValueError(f"speeds must be positive finite numbers, got {list(speeds)}")
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    inf = float("inf")
    # best[k][j]: min over splits of blocks[:j] into k nodes of the max time; arg for backtracking
    best = np.full((num_nodes + 1, m + 1), inf)
    arg = np.zeros((num_nodes + 1, m + 1), dtype=np.int64)
    best[0][0] = 0.0
    for k in range(1, num_nodes + 1):
        for j in range(k, m - (num_nodes - k) + 1):
            for i in range(k - 1, j):
                t = max(best[k - 1][i], (prefix[j] - prefix[i]) / speeds[k - 1])
                # prefer later cut on ties so early nodes are not overloaded
                if t < best[k][j] - 1e-12 or (abs(t - best[k][j]) <= 1e-12 and i > arg[k][j]):
                    best[k][j] = t
                    arg[k][j] = i
    starts = []
    j = m
    for k in range(num_nodes, 0, -1):
        i = int(arg[k][j])
        starts.append(i)
        j = i
    return starts[::-1]
