"""``oracle``: the earliest correct exit. NOT DEPLOYABLE: it reads the true labels.

The bound no deployable policy can beat on a trace. Offline (:meth:`score_matrix`) a sample
exits at its earliest correct exit; a sample that no exit gets right exits at node 1 (it is
wrong anyway, so the bound spends nothing on it; ``hopeless="last"`` sends it to the last node
instead). Live (:meth:`score`, one node at a time) the oracle cannot see later exits, so it exits
where the prediction is correct and otherwise runs to the last node. Thresholds are fixed at 0.5
(scores are 0/1); calibration leaves them alone.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..errors import PolicyError
from .base import ExitPolicy, State
from .registry import register_policy


@register_policy
class OraclePolicy(ExitPolicy):
    name = "oracle"
    deployable = False
    needs_labels = True
    tunable = False

    def __init__(self, num_nodes: int, thresholds: Any = None, *, hopeless: Literal["first", "last"] = "first") -> None:
        super().__init__(num_nodes, thresholds, hopeless=hopeless)

    def default_thresholds(self) -> np.ndarray:
        return np.full(self.num_nodes, 0.5)

    def _labels(self, labels: np.ndarray | None, n: int) -> np.ndarray:
        if labels is None:
            raise ValueError("oracle: needs the true labels (labels=...); it is an offline bound, not deployable")
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"oracle: labels must be ({n},), got shape {labels.shape}")
        return labels

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        logits = np.asarray(logits)
        y = self._labels(labels, logits.shape[0])
        return (logits.argmax(axis=-1) == y).astype(np.float64), state

    def score_matrix(self, logits, features=None, labels=None) -> np.ndarray:
        n, nn_, _ = logits.shape
        if nn_ != self.num_nodes:
            raise PolicyError(f"trace has {nn_} exits but the policy is for {self.num_nodes} nodes")
        y = self._labels(labels, n)
        s = (np.asarray(logits).argmax(axis=-1) == y[:, None]).astype(np.float64)
        if self.params["hopeless"] == "first":
            s[~s.astype(bool).any(axis=1), 0] = 1.0
        return s
