"""Scoring a policy (with its thresholds) over a whole trace: the figures of one policy."""

from __future__ import annotations

import numpy as np

from ..calibration.scoring import score_trace
from ..policies.base import ExitPolicy
from ..policies.thresholds import exit_nodes
from ..trace.format import Trace
from .metrics import Metrics, evaluate_exits


def evaluate_policy(policy: ExitPolicy, trace: Trace, scores: np.ndarray | None = None) -> Metrics:
    """Run ``policy`` (with its thresholds) over ``trace`` and return its figures."""
    s = score_trace(policy, trace) if scores is None else scores
    ex = exit_nodes(s, policy.thresholds)
    return evaluate_exits(trace.correct, trace.cost, ex, heads=policy.heads)
