"""Pareto sweeps: a policy's accuracy / compute trade-off as its thresholds move.

The sweep calibrates the policy on ``fit_trace`` (the validation trace, for honest curves) for
a grid of accuracy-drop targets (-1 to 5 pp in 0.1 pp steps, :func:`constrained_path`) plus the
Lagrangian path of :mod:`distree.calibration.search` (from "never exit" to "exit as early as
possible"), and scores every resulting threshold vector on ``eval_trace``. Reading a saving off
such a curve at a given *evaluation* drop picks the point in hindsight and reads high; the
operating points (:func:`operating_points`) are chosen on validation data alone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ..calibration.scoring import policy_costs, score_trace
from ..calibration.search import Problem, constrained_path, lagrangian_path
from ..policies.base import ExitPolicy
from ..policies.thresholds import exit_nodes
from ..trace.format import Trace
from .metrics import evaluate_exits

log = logging.getLogger(__name__)


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


def family_label(policy: ExitPolicy) -> str:
    """A policy and the parameters that differ from its defaults: ``distree (measure=js)``; ``confidence``."""
    from ..policies.registry import policy_params

    try:
        defaults = policy_params(policy.name)
    except Exception:  # noqa: BLE001 - a policy class outside the registry: show every parameter
        defaults = {}
    diff = {k: v for k, v in sorted(policy.params.items()) if defaults.get(k, object()) != v}
    return policy.name + (" (" + ", ".join(f"{k}={v}" for k, v in diff.items()) + ")" if diff else "")


@dataclass
class OperatingPoint:
    """A policy calibrated to one accuracy-drop target (by cross-fitting) and scored on held-out data."""

    target_pp: float
    saving: float  # on the evaluation trace, thresholds calibrated on the validation trace
    drop_pp: float
    split_savings: list[float]  # the same over random re-splits of validation + evaluation samples
    split_drops_pp: list[float]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("split_savings", "split_drops_pp"):
            v = np.asarray(d[k], dtype=np.float64)
            d[k.replace("split_", "split_mean_")] = float(v.mean()) if v.size else None
            d[k.replace("split_", "split_sd_")] = float(v.std(ddof=1)) if v.size > 1 else None
        return d


def operating_points(
    policy: ExitPolicy,
    eval_trace: Trace,
    fit_trace: Trace | None,
    targets_pp: tuple[float, ...] | list[float],
    *,
    splits: int = 3,
    folds: int = 5,
    seed: int = 0,
) -> list[OperatingPoint]:
    """``policy`` calibrated on ``fit_trace`` (cross-fit) at each drop target, scored on ``eval_trace``.

    The operating point is chosen by validation alone (what ``distree calibrate`` would write), not
    by the evaluation trace's own drop. ``splits`` random re-splits of the pooled samples into a
    calibration part of ``fit_trace``'s size and a scored part of ``eval_trace``'s show the spread.
    Without ``fit_trace`` the evaluation trace is re-split into halves instead and the main figure is
    calibrated on the evaluation trace itself (in-sample). Untunable policies get no points.
    """
    from ..calibration.crossfit import CrossFit

    if not policy.tunable:
        return []
    ev = Problem(score_trace(policy, eval_trace), eval_trace.correct, policy_costs(policy, eval_trace))
    fit = (
        ev
        if fit_trace is None
        else Problem(score_trace(policy, fit_trace), fit_trace.correct, policy_costs(policy, fit_trace))
    )

    def figures(cal: Problem, score: Problem) -> list[tuple[float, float]]:
        cf = CrossFit(cal, folds=folds, seed=seed)
        out = []
        for t in targets_pp:
            c, d = score.evaluate(cf.calibrate(t / 100.0).thresholds)
            out.append((1.0 - c, d * 100.0))
        return out

    main = figures(fit, ev)
    if fit_trace is None:
        pool, n_cal = ev, ev.n // 2
    else:
        if not np.allclose(policy_costs(policy, fit_trace), ev.cost):
            log.warning("validation and evaluation traces have different costs; no re-split spread")
            splits = 0
        pool = Problem(np.vstack([fit.scores, ev.scores]), np.vstack([fit.correct, ev.correct]), ev.cost)
        n_cal = fit.n
    rng = np.random.default_rng(seed)
    spread: list[list[tuple[float, float]]] = []
    for _ in range(splits):
        perm = rng.permutation(pool.n)
        spread.append(figures(pool.subset(np.sort(perm[:n_cal])), pool.subset(np.sort(perm[n_cal:]))))
    return [
        OperatingPoint(float(t), s, d, [float(sp[j][0]) for sp in spread], [float(sp[j][1]) for sp in spread])
        for j, (t, (s, d)) in enumerate(zip(targets_pp, main, strict=True))
    ]
