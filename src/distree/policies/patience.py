"""``patience``: exit when the prediction has stayed the same at k consecutive exits (PABEE).

Zhou et al., 2020, "BERT Loses Patience". Score at node i = the number of consecutive earlier
exits whose prediction equals exit i's (0 at node 1, and whenever the prediction changed); a
request exits when the score reaches the node's patience threshold (an integer, e.g. 1 = "same
answer as the previous exit"). State: the previous prediction and the run length (2 ints).
"""

from __future__ import annotations

import numpy as np

from .base import ExitPolicy, State
from .registry import register_policy


@register_policy
class PatiencePolicy(ExitPolicy):
    name = "patience"

    def score(self, node, logits, features, state, labels=None) -> tuple[np.ndarray, State]:
        pred = np.asarray(logits).argmax(axis=-1).astype(np.int32)
        if node == 0:
            run = np.zeros(pred.shape[0], dtype=np.int32)
        else:
            if "pred" not in state or "run" not in state:
                raise ValueError(
                    f"{self.name}: node {node} needs the state carried from node {node - 1} (keys 'pred', 'run'); "
                    "pass Decision.state of the previous node along with the request"
                )
            same = pred == np.asarray(state["pred"])
            run = np.where(same, np.asarray(state["run"]) + 1, 0).astype(np.int32)
        return run.astype(np.float64), {"pred": pred, "run": run}
