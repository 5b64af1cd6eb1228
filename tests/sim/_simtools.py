"""Tiny in-memory traces and scenarios for the simulator tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from distree.models.cost import CostProfile
from distree.sim import parse_scenario
from distree.trace import Trace


def make_trace(n: int = 200, nodes: int = 4, classes: int = 5, seed: int = 0, feat: int = 4) -> Trace:
    """Random logits whose confidence grows with depth; labels agree with the later exits more often."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(n, nodes, classes)).astype(np.float32)
    for i in range(nodes):
        logits[np.arange(n), i, labels] += 1.0 + 1.5 * i
    features = [rng.normal(size=(n, feat)).astype(np.float32) for _ in range(nodes)]
    cost = CostProfile(
        segment_flops=[1_000_000] * nodes,
        exit_flops=[10_000] * nodes,
        hop_bytes=[4096] * (nodes - 1),
        input_bytes=3072,
        output_bytes=classes * 4,
    )
    return Trace(logits=logits, features=features, labels=labels.astype(np.int64), cost=cost)


def scenario(**sections: Any):
    """A scenario from keyword sections, e.g. scenario(workload={...}, devices={...})."""
    data: dict[str, Any] = {"seed": 0}
    data.update(sections)
    return parse_scenario(data)
