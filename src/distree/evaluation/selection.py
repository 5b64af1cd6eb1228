"""Choosing between policies on validation data without touching the test split: repeated K-fold.

Each policy is calibrated on K-1 folds of the validation trace and scored on the held-out fold;
held-out exits are pooled over the folds and the figures averaged over repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..calibration.scoring import policy_costs, score_trace
from ..calibration.search import Problem, max_accuracy, min_cost
from ..policies.base import ExitPolicy
from ..policies.thresholds import exit_nodes
from ..trace.format import Trace


@dataclass
class CVResult:
    policy: str
    params: dict
    saving: float  # mean held-out FLOPs saving vs last exit
    drop_pp: float  # mean held-out accuracy drop (pp)
    saving_std: float
    drop_std: float


def cross_validate(
    policy: ExitPolicy,
    trace: Trace,
    *,
    max_drop_pp: float | None = None,
    flops_budget: float | None = None,
    folds: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> CVResult:
    """Held-out saving and drop of ``policy`` calibrated to one target (see :func:`distree.calibration.calibrate`)."""
    if (max_drop_pp is None) == (flops_budget is None):
        raise ValueError("give exactly one target: max_drop_pp or flops_budget")
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    prob = Problem(score_trace(policy, trace), trace.correct, policy_costs(policy, trace))
    n = prob.n
    rows = np.arange(n)
    savings, drops = [], []
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        fold = rng.permutation(n) % folds
        ex = np.empty(n, dtype=np.int64)
        for k in range(folds):
            tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            sub = prob.subset(tr)
            if not policy.tunable:
                th = policy.thresholds
            elif max_drop_pp is not None:
                th = min_cost(sub, max_drop_pp / 100.0).thresholds
            else:
                assert flops_budget is not None
                th = max_accuracy(sub, flops_budget).thresholds
            ex[te] = exit_nodes(prob.scores[te], th)
        savings.append(1.0 - float(prob.cost[ex].mean()))
        acc = float(prob.correct[rows, ex].mean())
        drops.append((1.0 - prob.base_err - acc) * 100.0)
    return CVResult(
        policy.name,
        dict(policy.params),
        float(np.mean(savings)),
        float(np.mean(drops)),
        float(np.std(savings)),
        float(np.std(drops)),
    )


def held_out_curve(
    policy: ExitPolicy,
    trace: Trace,
    targets_pp: list[float] | np.ndarray,
    *,
    folds: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """Held-out (drop_pp, saving) for each accuracy-drop target, (len(targets), 2), averaged over repeats."""
    pts = [
        cross_validate(policy, trace, max_drop_pp=float(t), folds=folds, repeats=repeats, seed=seed) for t in targets_pp
    ]
    return np.asarray([[p.drop_pp, p.saving] for p in pts])


def held_out_saving_at(curve: np.ndarray, drop_pp: float) -> float:
    """Saving interpolated at a held-out drop on a (drop_pp, saving) curve (its running maximum, monotone)."""
    c = curve[np.argsort(curve[:, 0])]
    sav = np.maximum.accumulate(c[:, 1])
    if drop_pp <= c[0, 0]:
        return float(sav[0]) if drop_pp == c[0, 0] else float(np.interp(drop_pp, [0.0, c[0, 0]], [0.0, sav[0]]))
    return float(np.interp(drop_pp, c[:, 0], sav))
