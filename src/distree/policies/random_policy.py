"""``random``: exit at node i with probability p_i, independent of the input (a sanity baseline).

Score = a uniform draw u in [0, 1); with threshold ``t_i = 1 - p_i`` a request exits when
``u >= t_i``, i.e. with probability p_i. Calibration tunes the thresholds (hence p_i) to an
accuracy or FLOPs target like any other policy. Seeded: param ``seed`` (default 0); offline
score matrices are reproducible for a given seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PolicyError
from .base import ExitPolicy, State
from .registry import register_policy


@register_policy
class RandomPolicy(ExitPolicy):
    name = "random"

    def __init__(self, num_nodes: int, thresholds: Any = None, *, seed: int = 0) -> None:
        super().__init__(num_nodes, thresholds, seed=seed)
        self._rng = np.random.default_rng(self.params["seed"])

    @classmethod
    def thresholds_for(cls, exit_probs: Any) -> np.ndarray:
        """Thresholds that exit with the given per-node probabilities."""
        return 1.0 - np.asarray(exit_probs, dtype=np.float64)

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        batch = int(np.asarray(logits).shape[0])  # an int size: an array of draws, never one float
        return self._rng.random(batch), state

    def score_matrix(self, logits, features=None, labels=None) -> np.ndarray:
        n, nn_, _ = logits.shape
        if nn_ != self.num_nodes:
            raise PolicyError(f"trace has {nn_} exits but the policy is for {self.num_nodes} nodes")
        return np.random.default_rng(self.params["seed"]).random((n, nn_))
