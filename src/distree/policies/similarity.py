"""``similarity``: exit when consecutive exits agree, by cosine similarity of their outputs.

After CALM's state-propagation confidence (Schuster et al., 2022): score at node i >= 1 is the
cosine similarity between exit i's and exit i-1's softmax outputs (``on="probs"``, default) or
feature vectors (``on="features"``). Node 1 has no predecessor and never exits (score -inf):
this is the baseline as published. State: the previous exit's output.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from . import _measures as m
from .base import ExitPolicy, State, softmax
from .registry import register_policy


@register_policy
class SimilarityPolicy(ExitPolicy):
    name = "similarity"

    def __init__(self, num_nodes: int, thresholds: Any = None, *, on: Literal["probs", "features"] = "probs") -> None:
        super().__init__(num_nodes, thresholds, on=on)
        self.needs_features = self.params["on"] == "features"  # type: ignore[misc]

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        logits = np.asarray(logits, dtype=np.float32)
        if self.needs_features:
            cur = m.check_features(self.name, node, features, logits.shape[0]).astype(np.float32)
        else:
            cur = softmax(logits)
        if node == 0:
            return np.full(logits.shape[0], -np.inf), {"prev": cur}
        prev = state.get("prev")
        if prev is None:
            raise ValueError(
                f"{self.name}: node {node} needs the state carried from node {node - 1} (key 'prev'); "
                "pass Decision.state of the previous node along with the request"
            )
        prev = np.asarray(prev)
        if prev.shape[1] != cur.shape[1]:
            raise ValueError(
                f"{self.name}: exits {node - 1} and {node} have outputs of {prev.shape[1]} and {cur.shape[1]} "
                "dimensions; cosine similarity needs equal sizes (use on='probs')"
            )
        return m.cosine_sim(cur, prev), {"prev": cur}
