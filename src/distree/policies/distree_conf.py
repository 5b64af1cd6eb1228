"""``distree-conf``: the DistrEE difference criterion combined with the exit's own confidence.

Score at node i >= 1: ``conf_i - alpha * d(i, i-1)`` with ``conf_i`` the top softmax probability
and ``d`` the difference measure of the ``distree`` policy (``measure``, default ``feat-w2``:
the normalised 2-Wasserstein distance between the entry distributions of consecutive exit
feature vectors); at node 1 (no predecessor) the score is ``conf_1``. A request exits when its
prediction is both confident and stable. This is the default policy.

Why ``feat-w2``: consecutive exit heads are separately parameterised, so the i-th unit of one
head's feature vector has nothing to do with the i-th unit of the next; only quantities that do
not depend on the order of a head's units are comparable between heads, and the widths may
differ (budget-sized heads, a backbone's own classifier). ``feat-w2`` compares the two vectors'
quantile functions: for equal widths it is the relative L2 distance (``feat-l2``) under the best
matching of units, and it is defined for any pair of widths. On equal-width models it measured
level with ``feat-l2`` (docs/policies.md); ``alpha=0.5`` as measured for ``feat-l2``. State
between nodes: the previous exit's sorted feature vector (F floats). The QoS rule is the one of
:meth:`ExitPolicy.decide`.
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
        measure: Measure = "feat-w2",
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
