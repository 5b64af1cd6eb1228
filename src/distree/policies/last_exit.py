"""``last-exit``: no early exit; every request runs every node (the accuracy reference)."""

from __future__ import annotations

import numpy as np

from .base import ExitPolicy, State
from .registry import register_policy


@register_policy
class LastExitPolicy(ExitPolicy):
    name = "last-exit"
    tunable = False
    heads = "final"  # no early-exit decisions: only the answering node's head runs
    baseline = True

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        return np.full(logits.shape[0], -np.inf), state
