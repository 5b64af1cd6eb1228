"""Calibration of exit-policy thresholds on a validation trace: accuracy target, FLOPs budget, risk control."""

from .api import calibrate, problem_for
from .risk import RiskResult, binom_lower, binom_upper, drop_upper_bound, learn_then_test, reject_drop_above
from .search import (
    Problem,
    Solution,
    constrained_path,
    coordinate_descent,
    lagrangian_path,
    max_accuracy,
    min_cost,
    pareto_front,
)

__all__ = [
    "Problem",
    "RiskResult",
    "Solution",
    "binom_lower",
    "binom_upper",
    "calibrate",
    "constrained_path",
    "coordinate_descent",
    "drop_upper_bound",
    "lagrangian_path",
    "learn_then_test",
    "max_accuracy",
    "min_cost",
    "pareto_front",
    "problem_for",
    "reject_drop_above",
]
