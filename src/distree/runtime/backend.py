"""The compute behind a node: what turns a batch of inputs into the successor's features and the exit's
logits and feature vectors. Nodes run one of the backends of :mod:`distree.backends` (torch, ONNX
Runtime fp32 or int8; see :mod:`~distree.runtime.node_model`); any object with the same ``run`` can
stand in for one (another runtime, or a fake in tests).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """What computes a node's part of the network: features for the successor (None on the last
    node), the exit's logits (B, K) and its feature vectors (B, F), as numpy arrays."""

    def run(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]: ...
