"""``distree``: the DistrEE feature-difference criterion plus the QoS rule (Peng et al., 2025).

At node i >= 1 a request exits when the change between node i's and node i-1's exit outputs is
small: ``score = 1 - d(i, i-1)`` reaches the node's calibrated threshold. The difference
measure ``d`` is a parameter (``measure``):

- ``tv`` (default): total-variation distance between the two exits' softmax outputs, in [0, 1];
- ``js``: Jensen-Shannon divergence / log 2, in [0, 1];
- ``kl``: KL(p_i || p_{i-1}) in nats (score ``-KL``);
- ``feat-w2``: W2(f_i, f_{i-1}) / (rms(f_i) + rms(f_{i-1})), the 2-Wasserstein distance between
  the distributions of the two feature vectors' entries (:func:`_measures.quantile_w2`), in [0, 1];
  defined for exits of any feature widths and blind to the order of a head's units;
- ``feat-l2``: ||f_i - f_{i-1}|| / (||f_i|| + ||f_{i-1}||) on the exit feature vectors (equal widths only);
- ``feat-cos``: 1 - cosine similarity of the exit feature vectors (score = cosine similarity; equal widths only).

The default was chosen by measurement on validation traces (docs/policies.md): prediction
measures beat feature measures there, and they carry only K floats between nodes.

Node 1 (index 0) has no predecessor, so a pure difference rule could never exit there; it
falls back to a confidence-type score (``first``: ``confidence`` = max softmax, ``entropy`` =
1 - normalised entropy, or ``none`` = never exit at node 1, the paper's pure rule).

The QoS rule (exit now when the estimated time to continue exceeds the time left before the
deadline) is applied by :meth:`ExitPolicy.decide` from ``ExitInputs.remaining_s`` and
``continue_s``. State between nodes: the previous exit's softmax (``prev``, (B, K) float32) or,
for feature measures, its feature vector (B, F; sorted for ``feat-w2``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from . import _measures as m
from .base import ExitPolicy, State, softmax
from .registry import register_policy

Measure = Literal["tv", "js", "kl", "feat-w2", "feat-l2", "feat-cos"]
FirstRule = Literal["confidence", "entropy", "none"]
PROB_MEASURES = ("tv", "js", "kl")
FEATURE_MEASURES = ("feat-w2", "feat-l2", "feat-cos")
MEASURES: tuple[str, ...] = get_args(Measure)
FIRST_NODE: tuple[str, ...] = get_args(FirstRule)


def first_node_score(kind: str, p: np.ndarray) -> np.ndarray:
    if kind == "confidence":
        return m.max_prob(p)
    if kind == "entropy":
        return 1.0 - m.norm_entropy(p)
    return np.full(p.shape[0], -np.inf)


@register_policy
class DistreePolicy(ExitPolicy):
    name = "distree"

    def __init__(
        self,
        num_nodes: int,
        thresholds: Any = None,
        *,
        measure: Measure = "tv",
        first: FirstRule = "confidence",
        **params: Any,
    ) -> None:
        # ``params``: the parameters a subclass adds (validated against the subclass's signature)
        super().__init__(num_nodes, thresholds, measure=measure, first=first, **params)
        self.needs_features = self.params["measure"] in FEATURE_MEASURES  # type: ignore[misc]

    def difference(self, p: np.ndarray, f: np.ndarray | None, prev: np.ndarray) -> np.ndarray:
        """d(node i, node i-1) for each request, (B,)."""
        meas = self.params["measure"]
        if meas == "tv":
            return m.total_variation(p, prev)
        if meas == "js":
            return m.js(p, prev)
        if meas == "kl":
            return m.kl(p, prev)
        assert f is not None
        if meas == "feat-w2":
            return m.quantile_w2(m.sort_rows(f), prev)
        if f.shape[1] != prev.shape[1]:
            raise ValueError(
                f"{self.name}: measure {meas!r} compares feature vectors of consecutive exits coordinate by "
                f"coordinate, but they have {prev.shape[1]} and {f.shape[1]} dimensions; use measure 'feat-w2' "
                "(any widths) or a prediction measure (tv, js, kl)"
            )
        if meas == "feat-l2":
            return m.rel_l2(f, prev)
        return 1.0 - m.cosine_sim(f, prev)

    def diff_score(self, d: np.ndarray) -> np.ndarray:
        return -d if self.params["measure"] == "kl" else 1.0 - d

    def _carry(self, p: np.ndarray, f: np.ndarray | None) -> np.ndarray:
        if not self.needs_features:
            return p.astype(np.float32)
        assert f is not None
        return m.sort_rows(f) if self.params["measure"] == "feat-w2" else f.astype(np.float32)

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        p = softmax(np.asarray(logits, dtype=np.float32))
        f = m.check_features(self.name, node, features, p.shape[0]) if self.needs_features else None
        if node == 0:
            s = first_node_score(self.params["first"], p)
        else:
            prev = state.get("prev")
            if prev is None:
                raise ValueError(
                    f"{self.name}: node {node} needs the state carried from node {node - 1} (key 'prev'); "
                    "pass Decision.state of the previous node along with the request"
                )
            s = self.diff_score(self.difference(p, f, np.asarray(prev)))
        return s, {"prev": self._carry(p, f)}
