"""Scoring a policy over a whole trace (the offline user of the policy interface)."""

from __future__ import annotations

import numpy as np

from ..policies.base import ExitPolicy
from ..trace.format import Trace
from .metrics import Metrics, evaluate_exits, exit_nodes, node_costs


def check_compatible(policy: ExitPolicy, trace: Trace) -> None:
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


def heads_mode(policy: ExitPolicy) -> str:
    """How the policy pays for exit heads: last-exit inference evaluates only the final head."""
    return "final" if policy.name == "last-exit" else "visited"


def relative_costs(policy: ExitPolicy, trace: Trace) -> np.ndarray:
    """FLOPs of exiting at node i relative to last-exit inference, under the policy's head accounting."""
    return node_costs(trace.cost, heads_mode(policy)) / trace.cost.last_exit_cost()


def evaluate_policy(policy: ExitPolicy, trace: Trace, scores: np.ndarray | None = None) -> Metrics:
    """Run ``policy`` (with its thresholds) over ``trace`` and return its figures."""
    s = score_trace(policy, trace) if scores is None else scores
    ex = exit_nodes(s, policy.thresholds)
    return evaluate_exits(trace.correct, trace.cost, ex, heads=heads_mode(policy))
