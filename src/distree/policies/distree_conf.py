"""``distree-conf``: the DistrEE difference criterion combined with the exit's own confidence.

Score at node i >= 1: ``conf_i - alpha * d(i, i-1)`` with ``conf_i`` the top softmax probability
and ``d`` the difference measure of the ``distree`` policy (``measure``, default ``feat-l2``:
the relative L2 distance between consecutive exit feature vectors); at node 1 (no
predecessor) the score is ``conf_1``. A request exits when its prediction is both confident
and stable. The defaults (``measure="feat-l2"``, ``alpha=0.5``) measured best on validation
traces (docs/policies.md); this is the default policy. State between nodes: the previous
exit's feature vector (F floats). The QoS rule is the one of :meth:`ExitPolicy.decide`.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from annotated_types import Ge

from . import _measures as m
from .base import State, softmax
from .distree_policy import DistreePolicy, FirstRule, Measure
from .registry import register_policy


@register_policy
class DistreeConfPolicy(DistreePolicy):
    name = "distree-conf"

    def __init__(
        self,
        num_nodes: int,
        thresholds: Any = None,
        *,
        alpha: Annotated[float, Ge(0)] = 0.5,
        measure: Measure = "feat-l2",
        first: FirstRule = "confidence",
    ) -> None:
        super().__init__(num_nodes, thresholds, alpha=alpha, measure=measure, first=first)

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        p = softmax(np.asarray(logits, dtype=np.float32))
        f = m.check_features(self.name, node, features, p.shape[0]) if self.needs_features else None
        conf = m.max_prob(p)
        if node == 0:
            s = conf if self.params["first"] != "none" else np.full(p.shape[0], -np.inf)
        else:
            prev = state.get("prev")
            if prev is None:
                raise ValueError(
                    f"{self.name}: node {node} needs the state carried from node {node - 1} (key 'prev'); "
                    "pass Decision.state of the previous node along with the request"
                )
            s = conf - self.params["alpha"] * self.difference(p, f, np.asarray(prev))
        return s, {"prev": self._carry(p, f)}
