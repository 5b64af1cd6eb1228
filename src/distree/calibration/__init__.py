"""Calibration of exit-policy thresholds on a validation trace: accuracy target, FLOPs budget, risk control.

Owns scoring a policy over a trace (:mod:`.scoring`), the per-node threshold search (:mod:`.search`),
cross-fitting to an expected held-out drop (:mod:`.crossfit`), Learn-then-Test risk control
(:mod:`.risk`), ``calibrate`` (:mod:`.api`) and repeated-split checks of a target (:mod:`.splits`). May import
:mod:`distree.policies` (the exit rule and cost accounting: :mod:`distree.policies.thresholds`),
:mod:`distree.trace` (the format) and :mod:`distree.models` (cost profiles); never
:mod:`distree.evaluation` (which imports this package) or anything that needs torch. numpy and scipy.
"""

from .api import METHODS, calibrate, fit, problem_for, validation_figures
from .crossfit import CrossFit, CrossFitResult, PathSolver, TargetSolver, cross_fit, trace_path
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
from .splits import SplitCheck, check_splits

__all__ = [
    "METHODS",
    "CrossFit",
    "CrossFitResult",
    "PathSolver",
    "Problem",
    "RiskResult",
    "Solution",
    "SplitCheck",
    "TargetSolver",
    "binom_lower",
    "binom_upper",
    "calibrate",
    "check_compatible",
    "check_splits",
    "constrained_path",
    "coordinate_descent",
    "cross_fit",
    "drop_upper_bound",
    "fit",
    "lagrangian_path",
    "learn_then_test",
    "max_accuracy",
    "min_cost",
    "pareto_front",
    "policy_costs",
    "problem_for",
    "reject_drop_above",
    "score_trace",
    "trace_path",
    "validation_figures",
]
