"""``entropy``: exit when the prediction's entropy is low (BranchyNet, Teerapittayanon et al., 2016).

Score = 1 - H(p) / log K, in [0, 1]; higher = more certain.
"""

from __future__ import annotations

import numpy as np

from . import _measures as m
from .base import ExitPolicy, State, softmax
from .registry import register_policy


@register_policy
class EntropyPolicy(ExitPolicy):
    name = "entropy"

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        return 1.0 - m.norm_entropy(softmax(np.asarray(logits, dtype=np.float32))), state
