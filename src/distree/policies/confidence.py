"""``confidence``: exit when the top softmax probability reaches the node's threshold (SDN, MSDNet)."""

from __future__ import annotations

import numpy as np

from .base import ExitPolicy, State, softmax
from .registry import register_policy


@register_policy
class ConfidencePolicy(ExitPolicy):
    name = "confidence"

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        return softmax(logits).max(axis=-1).astype(np.float64), state
