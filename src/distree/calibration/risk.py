"""Risk control: thresholds whose accuracy drop is at most EPS with probability at least 1 - DELTA.

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan and Lei, 2021, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052) with
fixed-sequence testing:

1. The calibration set is split at random. On the first part (``path_fraction``) the
   Lagrangian search builds candidate threshold vectors and orders them by their estimated
   accuracy drop there (most conservative first; the first is "never exit early").
2. On the second part each candidate k in that order is tested against the null hypothesis
   H_k: drop(k) > EPS, at level DELTA, stopping at the first one that is not rejected. Fixed-
   sequence testing controls the family-wise error at DELTA, so every rejected candidate has
   population drop <= EPS simultaneously, with probability >= 1 - DELTA; the cheapest is returned.

The test of H_k uses exact binomial (Clopper-Pearson) tail bounds. The population accuracy drop
is ``p_plus - p_minus``: ``p_plus`` = P(the policy's exit is wrong but the last exit is right),
``p_minus`` = P(the policy's exit is right but the last exit is wrong). Both are Bernoulli means;
H_k is rejected when ``UCB(p_plus) - LCB(p_minus) <= EPS`` with each bound at level DELTA / 2 —
under H_k that needs one of the two bounds to fail, which has probability at most DELTA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from ..evaluation.metrics import exit_nodes
from .search import Problem, lagrangian_path, never_exit


@lru_cache(maxsize=64)
def _log_binom_coef(n: int) -> np.ndarray:
    k = np.arange(n + 1)
    lg = np.vectorize(math.lgamma)
    return lg(n + 1.0) - lg(k + 1.0) - lg(n - k + 1.0)


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k), exact (log-space sum)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    j = np.arange(k + 1)
    logs = _log_binom_coef(n)[: k + 1] + j * math.log(p) + (n - j) * math.log1p(-p)
    mx = logs.max()
    return float(min(1.0, math.exp(mx) * np.exp(logs - mx).sum()))


def binom_upper(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson upper bound: the p with P(Bin(n, p) <= k) = alpha (1 if k = n)."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def binom_lower(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson lower bound: the p with P(Bin(n, p) >= k) = alpha (0 if k = 0)."""
    if n <= 0 or k <= 0:
        return 0.0
    return 1.0 - binom_upper(n - k, n, alpha)


def drop_upper_bound(n_plus: int, n_minus: int, n: int, delta: float) -> float:
    """Upper confidence bound (level 1 - delta) on the population accuracy drop (fraction)."""
    return binom_upper(n_plus, n, delta / 2) - binom_lower(n_minus, n, delta / 2)


@dataclass
class RiskResult:
    thresholds: np.ndarray
    certified: int  # candidates certified (1: only 'never exit early', which needs no test)
    tested: int
    bound: float  # the upper confidence bound on the drop of the returned thresholds (fraction)
    n_path: int
    n_test: int
    sequence: list[dict[str, Any]] = field(default_factory=list)


def learn_then_test(
    prob: Problem,
    max_drop: float,
    delta: float,
    *,
    path_fraction: float = 0.3,
    seed: int = 0,
    num_candidates: int = 48,
    **kw: Any,
) -> RiskResult:
    """Thresholds with P(population drop <= max_drop) >= 1 - delta over the draw of ``prob``."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1) (confidence 1 - delta), got {delta}")
    if not 0.0 < path_fraction < 1.0:
        raise ValueError(f"path_fraction must be in (0, 1), got {path_fraction}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(prob.n)
    n_path = int(round(path_fraction * prob.n))
    if n_path < 1 or prob.n - n_path < 1:
        raise ValueError(f"risk control needs more calibration samples than {prob.n}")
    path_p = prob.subset(perm[:n_path])
    test_p = prob.subset(perm[n_path:])
    # candidates: the Lagrangian path on the first part, ordered by its estimated drop there
    sols = lagrangian_path(path_p, num=num_candidates, **kw)
    cands: list[tuple[float, float, np.ndarray]] = []
    seen: set[bytes] = set()
    for s in sols:
        key = s.thresholds.tobytes()
        if key not in seen:
            seen.add(key)
            cands.append((s.drop, -s.rel_cost, s.thresholds))
    cands.sort(key=lambda c: (c[0], c[1]))
    sequence = [never_exit(prob.num_nodes)] + [c[2] for c in cands]
    n = test_p.n
    rows = np.arange(n)
    last_ok = test_p.correct[:, -1]
    # "never exit early" has drop exactly 0 by construction: its null hypothesis is false, no test needed
    chosen = never_exit(prob.num_nodes)
    chosen_cost = float(test_p.cost[-1])
    chosen_bound = 0.0
    certified = 1
    tested = 0
    log: list[dict[str, Any]] = []
    for th in sequence[1:]:
        tested += 1
        ex = exit_nodes(test_p.scores, th)
        ok = test_p.correct[rows, ex]
        n_plus = int((~ok & last_ok).sum())
        n_minus = int((ok & ~last_ok).sum())
        ub = drop_upper_bound(n_plus, n_minus, n, delta)
        cost = float(test_p.cost[ex].mean())
        log.append({"n_plus": n_plus, "n_minus": n_minus, "bound": ub, "rel_cost": cost})
        if ub > max_drop:
            break
        certified += 1
        if cost < chosen_cost:
            chosen, chosen_cost, chosen_bound = th, cost, ub
    return RiskResult(chosen.copy(), certified, tested, chosen_bound, n_path, n, log)
