"""Scoring a policy over a whole trace: the offline user of the policy interface.

Calibration searches thresholds on these score matrices; offline evaluation and the Pareto sweeps
score them too (they import this module; it imports nothing from :mod:`distree.evaluation`).
"""

from __future__ import annotations

import numpy as np

from ..policies.base import ExitPolicy
from ..policies.thresholds import relative_costs
from ..trace.format import Trace


def check_compatible(policy: ExitPolicy, trace: Trace) -> None:
    """Raise a clear error when ``policy`` and ``trace`` disagree on the number of nodes."""
    if policy.num_nodes != trace.num_nodes:
        raise ValueError(
            f"policy {policy.name!r} is for {policy.num_nodes} nodes but the trace has {trace.num_nodes} exits; "
            "calibrate a policy on a trace of the same model"
        )


def score_trace(policy: ExitPolicy, trace: Trace) -> np.ndarray:
    """The (n, N) score matrix of ``policy`` on ``trace`` (labels are passed only to non-deployable policies)."""
    check_compatible(policy, trace)
    labels = trace.labels if policy.needs_labels else None
    feats = trace.features if policy.needs_features else None
    return policy.score_matrix(trace.logits, feats, labels)


def policy_costs(policy: ExitPolicy, trace: Trace) -> np.ndarray:
    """FLOPs of exiting at node i relative to last-exit inference, under the policy's ``heads`` accounting, (N,)."""
    return relative_costs(trace.cost, policy.heads)
