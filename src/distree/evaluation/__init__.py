"""Offline evaluation of exit policies on traces: metrics, Pareto sweeps, reports."""

from .metrics import (
    Metrics,
    accuracy,
    evaluate_exits,
    exit_histogram,
    exit_nodes,
    last_exit_metrics,
    mean_bytes,
    mean_flops,
    node_costs,
    relative_exit_cost,
)
from .scoring import evaluate_policy, relative_costs, score_trace

__all__ = [
    "Metrics",
    "accuracy",
    "evaluate_exits",
    "evaluate_policy",
    "exit_histogram",
    "exit_nodes",
    "last_exit_metrics",
    "mean_bytes",
    "mean_flops",
    "node_costs",
    "relative_costs",
    "relative_exit_cost",
    "score_trace",
]
