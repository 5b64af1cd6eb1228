"""Calibration of exit-policy thresholds on a validation trace: accuracy target, FLOPs budget, risk control.

Owns scoring a policy over a trace (:mod:`.scoring`), the per-node threshold search (:mod:`.search`),
Learn-then-Test risk control (:mod:`.risk`) and ``calibrate`` (:mod:`.api`). May import
:mod:`distree.policies` (the exit rule and cost accounting: :mod:`distree.policies.thresholds`),
:mod:`distree.trace` (the format) and :mod:`distree.models` (cost profiles); never
:mod:`distree.evaluation` (which imports this package) or anything that needs torch. numpy and scipy.
"""

from .api import calibrate, problem_for, validation_figures
from .risk import RiskResult, binom_lower, binom_upper, drop_upper_bound, learn_then_test, reject_drop_above
from .scoring import check_compatible, policy_costs, score_trace
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
    "check_compatible",
    "constrained_path",
    "coordinate_descent",
    "drop_upper_bound",
    "lagrangian_path",
    "learn_then_test",
    "max_accuracy",
    "min_cost",
    "pareto_front",
    "policy_costs",
    "problem_for",
    "reject_drop_above",
    "score_trace",
    "validation_figures",
]
