"""``calibrate``: per-node thresholds for a policy, on a validation trace only."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..policies.base import ExitPolicy
from ..policies.thresholds import exit_nodes
from ..trace.format import Trace
from .crossfit import PathSolver, cross_fit, trace_path
from .risk import learn_then_test
from .scoring import policy_costs, score_trace
from .search import Problem, max_accuracy, min_cost

log = logging.getLogger(__name__)

#: how an accuracy target without risk control is met (see :func:`calibrate`)
METHODS = ("cross-fit", "in-sample")


def problem_for(policy: ExitPolicy, trace: Trace) -> Problem:
    """The calibration problem of ``policy`` on ``trace``: its scores, which exits are right, relative exit costs."""
    return Problem(score_trace(policy, trace), trace.correct, policy_costs(policy, trace))


def validation_figures(prob: Problem, thresholds: np.ndarray, trace: Trace) -> dict[str, float]:
    """Accuracy, drop vs last exit, relative FLOPs, saving and mean bytes of ``thresholds`` on ``prob``."""
    ex = exit_nodes(prob.scores, thresholds)
    acc = float(prob.correct[np.arange(prob.n), ex].mean())
    last = float(prob.correct[:, -1].mean())
    rel = float(prob.cost[ex].mean())
    return {
        "accuracy": acc,
        "last_exit_accuracy": last,
        "drop_pp": (last - acc) * 100.0,
        "rel_flops": rel,
        "saving": 1.0 - rel,
        "mean_bytes": float(trace.cost.bytes_to_exit()[ex].mean()),
    }


def _same_samples(a: Trace, b: Trace) -> bool:
    """Whether two traces are of the same checkpoint and split (so they hold the same samples)."""
    keys = ("checkpoint", "split")
    return all(k in a.meta and a.meta.get(k) == b.meta.get(k) for k in keys) or (
        a.num_samples == b.num_samples and np.array_equal(a.labels, b.labels) and np.array_equal(a.logits, b.logits)
    )


def fit(
    prob: Problem,
    *,
    max_drop_pp: float | None = None,
    flops_budget: float | None = None,
    confidence: float | None = None,
    method: str = "cross-fit",
    path_fraction: float = 0.3,
    seed: int = 0,
    max_candidates: int | None = 256,
    folds: int = 5,
    repeats: int = 1,
    risk_path: str = "frontier",
    path_prob: Problem | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Thresholds for one target on a calibration problem, and what the policy file records about how.

    The arguments are :func:`calibrate`'s (checked there); ``prob`` must be tunable.
    """
    kw: dict[str, Any] = {"max_candidates": max_candidates}
    if path_prob is not None and (path_prob.num_nodes != prob.num_nodes or not np.allclose(path_prob.cost, prob.cost)):
        raise ValueError(
            "the path trace has other exits or exit costs than the calibration trace: "
            "trace the same checkpoint (distree trace --split train)"
        )
    if flops_budget is not None:
        sol = max_accuracy(prob, flops_budget, **kw)
        return sol.thresholds, {"method": "lagrangian", "target": {"flops_budget": flops_budget}}
    assert max_drop_pp is not None
    target: dict[str, Any] = {"max_accuracy_drop_pp": max_drop_pp}
    cands = None if path_prob is None or confidence is not None else trace_path(path_prob, max_drop_pp / 100.0, **kw)
    search = "lagrangian" if cands is None else "path trace"
    if confidence is None and method == "in-sample":
        if cands is not None:
            th = PathSolver(prob, cands).solve(max_drop_pp / 100.0)
        else:
            th = min_cost(prob, max_drop_pp / 100.0, **kw).thresholds
        return th, {"method": "in-sample", "search": search, "target": target}
    if confidence is None:
        cf = cross_fit(prob, max_drop_pp / 100.0, folds=folds, repeats=repeats, seed=seed, candidates=cands, **kw)
        cf_rec = cf.record(seed)
        if cands is not None:
            cf_rec["path_candidates"] = int(cands.shape[0])
        return cf.thresholds, {"method": "cross-fit", "search": search, "target": target, "cross_fit": cf_rec}
    delta = 1.0 - confidence
    res = learn_then_test(
        prob, max_drop_pp / 100.0, delta, path_fraction=path_fraction, seed=seed, path=risk_path,
        path_prob=path_prob, **kw,
    )  # fmt: skip
    rec = {
        "method": "learn-then-test",
        "target": {**target, "confidence": confidence},
        "risk": {
            "delta": delta,
            "drop_upper_bound_pp": res.bound * 100.0,
            "certified": res.certified,
            "tested": res.tested,
            "n_path": res.n_path,
            "n_test": res.n_test,
            "path_fraction": None if path_prob is not None else path_fraction,
            "path_samples": "path trace" if path_prob is not None else "calibration split",
            "path": risk_path,
            "seed": seed,
            "test": "exact binomial test on discordant samples + Clopper-Pearson bound on discordance",
        },
    }
    return res.thresholds, rec


def calibrate(
    policy: ExitPolicy,
    trace: Trace,
    *,
    max_drop_pp: float | None = None,
    flops_budget: float | None = None,
    confidence: float | None = None,
    path_fraction: float = 0.3,
    seed: int = 0,
    max_candidates: int | None = 256,
    method: str | None = None,
    folds: int = 5,
    repeats: int = 1,
    risk_path: str = "frontier",
    path_trace: Trace | None = None,
) -> ExitPolicy:
    """Return a copy of ``policy`` with calibrated thresholds and a ``calibration`` record.

    Exactly one target: ``max_drop_pp`` (accuracy drop vs last exit, percentage points; minimise
    FLOPs), optionally with ``confidence`` = 1 - DELTA for risk control (Learn-then-Test), or
    ``flops_budget`` (mean FLOPs relative to last exit, e.g. 0.6; maximise accuracy).

    Without risk control the accuracy target is met by ``method``: ``"cross-fit"`` (default; the
    expected held-out drop is ``max_drop_pp``, estimated by ``folds``-fold cross-fitting repeated
    ``repeats`` times, :mod:`.crossfit`) or ``"in-sample"`` (the drop on ``trace`` itself is
    ``max_drop_pp``; reads optimistic on new data). ``seed`` seeds the folds and the risk split;
    ``risk_path`` is risk control's candidate sequence (:func:`.risk.learn_then_test`);
    ``path_trace`` is another trace of the same model whose samples are not in ``trace`` (its
    training split): risk control orders its candidates on it, so that all of ``trace`` tests them;
    without risk control the fits choose only along the line of thresholds it gives
    (:func:`.crossfit.trace_path`), which keeps more of the saving at the same held-out drop.
    """
    if (max_drop_pp is None) == (flops_budget is None):
        raise ValueError("give exactly one target: --max-accuracy-drop EPS or --flops-budget B")
    if confidence is not None and max_drop_pp is None:
        raise ValueError("--confidence (risk control) goes with --max-accuracy-drop, not with --flops-budget")
    if max_drop_pp is not None and max_drop_pp < 0:
        raise ValueError(f"--max-accuracy-drop must be >= 0 percentage points, got {max_drop_pp}")
    if flops_budget is not None and flops_budget <= 0:
        raise ValueError(f"--flops-budget is relative to last-exit FLOPs and must be > 0, got {flops_budget}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise ValueError(f"--confidence is 1 - DELTA and must be in (0, 1), got {confidence}")
    if method is not None and method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method is not None and (max_drop_pp is None or confidence is not None):
        raise ValueError(
            "--method (cross-fit | in-sample) applies to --max-accuracy-drop without --confidence; "
            "drop it for --flops-budget or risk control"
        )
    if path_trace is not None and max_drop_pp is None:
        raise ValueError(
            "--path-trace goes with --max-accuracy-drop (with or without --confidence), not --flops-budget"
        )
    if path_trace is not None and _same_samples(path_trace, trace):
        raise ValueError(
            "--path-trace holds the calibration samples themselves (same checkpoint and split); the path "
            "must come from other samples: trace the training split (distree trace --split train)"
        )
    method = method or "cross-fit"
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "trace": {k: trace.meta.get(k) for k in ("checkpoint", "model", "dataset", "split") if k in trace.meta},
        "num_samples": trace.num_samples,
    }
    prob = problem_for(policy, trace)
    if not policy.tunable:
        out = policy.with_thresholds(policy.thresholds)
        record["method"] = "fixed (policy has no tunable thresholds)"
    else:
        th, rec = fit(
            prob,
            max_drop_pp=max_drop_pp,
            flops_budget=flops_budget,
            confidence=confidence,
            method=method,
            path_fraction=path_fraction,
            seed=seed,
            max_candidates=max_candidates,
            folds=folds,
            repeats=repeats,
            risk_path=risk_path,
            path_prob=None if path_trace is None else problem_for(policy, path_trace),
        )
        if path_trace is not None:
            rec["path_trace"] = {k: path_trace.meta.get(k) for k in ("checkpoint", "split") if k in path_trace.meta}
            rec["path_trace"]["num_samples"] = path_trace.num_samples
        record.update(rec)
        out = policy.with_thresholds(th)
        ex = exit_nodes(prob.scores, th)
        record["achieved_exit_hist"] = [float((ex == i).mean()) for i in range(trace.num_nodes)]
    v = record["validation"] = validation_figures(prob, out.thresholds, trace)
    record["seconds"] = time.perf_counter() - t0
    out.calibration = record
    log.info(
        "calibrated %s in %.2fs: drop %.3f pp, saving %.1f%%",
        policy.name,
        record["seconds"],
        v["drop_pp"],
        100 * v["saving"],
    )
    return out
