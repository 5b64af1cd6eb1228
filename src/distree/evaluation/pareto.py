"""Pareto sweeps: a policy's accuracy / compute trade-off as its thresholds move.

The sweep calibrates the policy on ``fit_trace`` (the validation trace, for honest curves) for
a grid of accuracy-drop targets (-1 to 5 pp in 0.1 pp steps, :func:`constrained_path`) plus the
Lagrangian path of :mod:`distree.calibration.search` (from "never exit" to "exit as early as
possible"), and scores every resulting threshold vector on ``eval_trace``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..calibration.scoring import policy_costs, score_trace
from ..calibration.search import Problem, constrained_path, lagrangian_path
from ..policies.base import ExitPolicy
from ..policies.thresholds import exit_nodes
from ..trace.format import Trace
from .metrics import evaluate_exits


@dataclass
class SweepPoint:
    rel_flops: float
    accuracy: float
    drop_pp: float
    thresholds: list[float | None]

    def to_dict(self) -> dict:
        return asdict(self)


def pareto_sweep(
    policy: ExitPolicy, eval_trace: Trace, fit_trace: Trace | None = None, *, num: int = 48
) -> list[SweepPoint]:
    """Points (sorted by relative FLOPs) of ``policy`` on ``eval_trace``, thresholds fitted on ``fit_trace``."""
    eval_scores = score_trace(policy, eval_trace)
    heads = policy.heads
    if policy.tunable:
        fit = fit_trace if fit_trace is not None else eval_trace
        fit_scores = eval_scores if fit is eval_trace else score_trace(policy, fit)
        prob = Problem(fit_scores, fit.correct, policy_costs(policy, fit))
        cands = [s.thresholds for s in lagrangian_path(prob, num=num)]
        cands += [s.thresholds for s in constrained_path(prob, np.arange(-10, 51) / 1000.0)]
        cands.append(np.full(policy.num_nodes, np.inf))
    else:
        cands = [policy.thresholds]
    out: dict[bytes, SweepPoint] = {}
    for th in cands:
        key = np.asarray(th).tobytes()
        if key in out:
            continue
        m = evaluate_exits(eval_trace.correct, eval_trace.cost, exit_nodes(eval_scores, th), heads=heads)
        out[key] = SweepPoint(
            m.rel_flops, m.accuracy, m.drop_pp, [float(t) if np.isfinite(t) else None for t in np.asarray(th)]
        )
    return sorted(out.values(), key=lambda p: (p.rel_flops, -p.accuracy))


def upper_envelope(points: list[SweepPoint]) -> list[SweepPoint]:
    """Non-dominated points: no other point is both cheaper (or equal) and more accurate."""
    best = -np.inf
    keep = []
    for p in sorted(points, key=lambda p: (p.rel_flops, -p.accuracy)):
        if p.accuracy > best + 1e-12:
            keep.append(p)
            best = p.accuracy
    return keep


def max_saving_within(points: list[SweepPoint], drop_pp: float) -> float:
    """Largest FLOPs saving among the points whose accuracy drop is at most ``drop_pp``."""
    ok = [1.0 - p.rel_flops for p in points if p.drop_pp <= drop_pp + 1e-9]
    return max(ok) if ok else 0.0
