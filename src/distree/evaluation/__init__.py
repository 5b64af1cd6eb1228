"""Offline evaluation of exit policies on traces: metrics, Pareto sweeps, cross-validated selection, reports.

Owns the figures of a policy on a trace (accuracy, drop vs last exit, FLOPs saving, bytes, exit
histogram), Pareto sweeps, repeated K-fold selection, markdown / JSON / PNG reports and synthetic
traces. May import :mod:`distree.policies` (the exit rule and cost accounting live in
:mod:`distree.policies.thresholds`), :mod:`distree.trace`, :mod:`distree.models` (cost profiles
only) and :mod:`distree.calibration`; nothing imports it except the CLI. numpy only; matplotlib on
plotting.
"""

from .metrics import (
    Metrics,
    accuracy,
    evaluate_exits,
    exit_histogram,
    last_exit_metrics,
    mean_bytes,
    mean_flops,
)
from .pareto import SweepPoint, max_saving_within, pareto_sweep, upper_envelope
from .report import PolicyResult, Report, build_report, plot_pareto, report_markdown, write_report
from .scoring import evaluate_policy
from .selection import CVResult, cross_validate, held_out_curve, held_out_saving_at
from .synthetic import synthetic_trace

__all__ = [
    "CVResult",
    "Metrics",
    "PolicyResult",
    "Report",
    "SweepPoint",
    "accuracy",
    "build_report",
    "cross_validate",
    "evaluate_exits",
    "evaluate_policy",
    "exit_histogram",
    "held_out_curve",
    "held_out_saving_at",
    "last_exit_metrics",
    "max_saving_within",
    "mean_bytes",
    "mean_flops",
    "pareto_sweep",
    "plot_pareto",
    "report_markdown",
    "synthetic_trace",
    "upper_envelope",
    "write_report",
]
