"""Risk control: thresholds whose accuracy drop is at most EPS with probability at least 1 - DELTA.

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan and Lei, 2021, "Learn then Test:
Calibrating Predictive Algorithms to Achieve Risk Control", arXiv:2110.01052) with
fixed-sequence testing:

1. The calibration set is split at random. On the first part (``path_fraction``) the
   candidates are ordered from "never exit early" to aggressive. The default path
   (``"frontier"``) follows the first part's cost/accuracy frontier: references are the cheapest
   thresholds there for drops -max(2 EPS, 0.5 pp) ... ``path_span`` x EPS; the sequence first scales every node's
   exit share (by that node's score quantiles) from zero to the first reference, then moves the
   shares linearly from each reference to the next. The earlier path (``"interpolate"``) scales
   the shares from zero to one reference fitted for 2 x EPS; it ends further from the frontier
   (on CIFAR-10 WRN-16-1 traces the default policy certified 40.4% saving at 0.5 pp with it,
   44.2% on the frontier path; docs/policies.md).
   Consecutive candidates differ by a few exits, so the drop grows smoothly along the sequence.
2. On the second part each candidate k in that order is tested against the null hypothesis
   H_k: drop(k) > EPS, at level DELTA, stopping at the first one that is not rejected. Fixed-
   sequence testing controls the family-wise error at DELTA, so every rejected candidate has
   population drop <= EPS simultaneously, with probability >= 1 - DELTA; the cheapest is returned.

The test of H_k is an exact binomial test on the discordant samples (McNemar's idea, made
one-sided and non-asymptotic). The population drop is ``p_plus - p_minus`` with ``p_plus`` =
P(the policy's exit is wrong but the last exit is right) and ``p_minus`` = P(right but the last
exit wrong). Write ``r = p_plus + p_minus`` (discordance) and ``q = p_plus / r``. Under H_k,
``q > 1/2 + EPS / (2 r)``. With ``r_max`` a Clopper-Pearson upper bound on ``r`` at level
``DELTA / 10``, H_k is rejected when the number of "wrong but last right" samples among the ``m``
discordant ones is improbably small for ``q0 = 1/2 + EPS / (2 r_max)``:
``P(Bin(m, q0) <= n_plus) <= 0.9 DELTA``. Given ``m``, ``n_plus`` is Bin(m, q), so under H_k a
rejection needs either ``r > r_max`` (probability <= DELTA / 10) or the binomial tail event
(<= 0.9 DELTA): the test has level DELTA. It adapts to the discordance: a union of two
one-sided bounds on ``p_plus`` and ``p_minus`` would need twice the margin when exits flip
answers in both directions, which early exits do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..policies.thresholds import exit_nodes
from .search import Problem, min_cost, never_exit


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k); ``p`` outside [0, 1] is clipped (the test's null proportion can leave it)."""
    return float(stats.binom.cdf(k, n, min(max(p, 0.0), 1.0)))


def binom_upper(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson upper bound: the p with P(Bin(n, p) <= k) = alpha (1 if k >= n)."""
    if n <= 0 or k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - alpha, k + 1, n - k))


def binom_lower(k: int, n: int, alpha: float) -> float:
    """Clopper-Pearson lower bound: the p with P(Bin(n, p) >= k) = alpha (0 if k <= 0)."""
    if n <= 0 or k <= 0:
        return 0.0
    return 1.0 - binom_upper(n - k, n, alpha)


R_SHARE = 0.1  # share of DELTA spent on the discordance bound


def reject_drop_above(n_plus: int, n_minus: int, n: int, max_drop: float, delta: float) -> bool:
    """Level-``delta`` test of H: population drop > ``max_drop``, from paired counts on ``n`` samples."""
    m = n_plus + n_minus
    if max_drop >= 1.0:
        return True
    if m == 0:
        # no discordance observed: H needs r > max_drop; reject if the upper bound on r is below it
        return binom_upper(0, n, delta) <= max_drop
    r_max = binom_upper(m, n, R_SHARE * delta)
    if r_max <= max_drop:
        return True  # even if every discordant sample were a loss, the drop is at most r <= max_drop
    q0 = 0.5 + max_drop / (2.0 * r_max)
    return binom_cdf(n_plus, m, q0) <= (1.0 - R_SHARE) * delta


def drop_upper_bound(n_plus: int, n_minus: int, n: int, delta: float, tol: float = 1e-5) -> float:
    """Smallest EPS (fraction) that :func:`reject_drop_above` certifies: a (1 - delta) upper bound on the drop."""
    lo, hi = -1.0, 1.0
    if reject_drop_above(n_plus, n_minus, n, lo, delta):
        return lo
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if reject_drop_above(n_plus, n_minus, n, mid, delta):
            hi = mid
        else:
            lo = mid
    return hi


PATHS = ("frontier", "interpolate")


def _share_thresholds(p: Problem, ref: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """``ref`` with node i's threshold moved to let the top ``shares[i]`` of ``p``'s samples exit there."""
    th = ref.copy()
    for i in range(p.num_nodes - 1):
        if shares[i] <= 0.0:
            th[i] = np.inf
        else:
            th[i] = float(np.quantile(p.scores[:, i], 1.0 - min(shares[i], 1.0), method="higher"))
    return th


def _interpolated_sequence(
    path_p: Problem, max_drop: float, path_span: float, num_candidates: int, **kw: Any
) -> list[np.ndarray]:
    """From "never exit early" to the reference for ``path_span`` x EPS, scaling every node's exit share."""
    ref = min_cost(path_p, path_span * max_drop, **kw).thresholds
    sequence = []
    for a in np.linspace(0.0, 1.0, num_candidates + 1)[1:]:
        th = ref.copy()
        for i in range(path_p.num_nodes - 1):
            col = path_p.scores[:, i]
            share = float((col >= ref[i]).mean())
            if share <= 0.0:
                continue
            # the threshold passing the top a * share of the path samples at node i
            th[i] = float(np.quantile(col, 1.0 - a * share, method="higher"))
        sequence.append(th)
    return sequence


def _frontier_sequence(
    path_p: Problem,
    max_drop: float,
    path_span: float,
    max_candidates: int | None,
    *,
    num_refs: int = 13,
    num_prefix: int = 40,
    num_blend: int = 5,
) -> list[np.ndarray]:
    """Along the cost/accuracy frontier of the first part, entered smoothly.

    References: the cheapest thresholds on the first part for drops from -max(2 EPS, 0.5 pp)
    (more accurate than the last exit there: fits on a small part overshoot on new data, so the
    conservative end of the frontier is where candidates near the certifiable drop lie) up to
    ``path_span`` x EPS (``num_refs`` targets, :class:`~distree.calibration.crossfit.TargetSolver`). The sequence
    first scales every node's exit share from "never exit early" up to the first reference
    (``num_prefix`` steps), then moves each node's exit share linearly from one reference to the
    next (``num_blend`` steps each), so consecutive candidates differ by a few exits all the way.
    """
    from .crossfit import TargetSolver

    solver = TargetSolver(path_p, max_candidates=max_candidates)
    low = -max(2.0 * max_drop, 0.005)

    def shares(th: np.ndarray) -> np.ndarray:
        return np.array([(path_p.scores[:, i] >= th[i]).mean() for i in range(path_p.num_nodes - 1)])

    refs: list[np.ndarray] = []
    for t in np.linspace(low, path_span * max_drop, num_refs):
        th = solver.solve(float(t))
        if not shares(th).any() or (refs and np.array_equal(th, refs[-1])):
            continue  # targets the first part cannot meet with any early exit, and repeats
        refs.append(th)
    if not refs:
        return []

    sequence = [_share_thresholds(path_p, refs[0], a * shares(refs[0])) for a in np.linspace(0, 1, num_prefix + 1)[1:]]
    for prev, ref in zip(refs[:-1], refs[1:], strict=True):
        sa, sb = shares(prev), shares(ref)
        sequence += [
            _share_thresholds(path_p, ref, (1 - w) * sa + w * sb) for w in np.linspace(0, 1, num_blend + 1)[1:]
        ]
    return sequence


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
    num_candidates: int = 50,
    path_span: float | None = None,
    path: str = "frontier",
    path_prob: Problem | None = None,
    **kw: Any,
) -> RiskResult:
    """Thresholds with P(population drop <= max_drop) >= 1 - delta over the draw of ``prob``.

    ``path``: ``"frontier"`` (default) or ``"interpolate"`` (the earlier candidate sequence, kept for
    comparison); ``path_span`` (default 3 and 2 respectively) is how far, in multiples of
    ``max_drop`` on the first part, the candidates reach.

    ``path_prob``: order the candidates on these samples instead of a ``path_fraction`` of ``prob``,
    and test on all of ``prob``. They must be independent of ``prob`` (the training split of the
    same model is: its samples are not in the calibration set, and the sequence depends on nothing
    the test sees), which keeps fixed-sequence testing valid while the test gets every calibration
    sample.
    """
    if path not in PATHS:
        raise ValueError(f"risk-control path must be one of {', '.join(PATHS)}, got {path!r}")
    if path_span is None:
        path_span = 3.0 if path == "frontier" else 2.0
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1) (confidence 1 - delta), got {delta}")
    if path_prob is not None:
        if path_prob.num_nodes != prob.num_nodes or not np.allclose(path_prob.cost, prob.cost):
            raise ValueError(
                "the path trace has other exits or exit costs than the calibration trace: "
                "trace the same checkpoint (distree trace --split train)"
            )
        path_p, test_p, n_path = path_prob, prob, path_prob.n
    else:
        if not 0.0 < path_fraction < 1.0:
            raise ValueError(f"path_fraction must be in (0, 1), got {path_fraction}")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(prob.n)
        n_path = int(round(path_fraction * prob.n))
        if n_path < 1 or prob.n - n_path < 1:
            raise ValueError(f"risk control needs more calibration samples than {prob.n}")
        path_p = prob.subset(perm[:n_path])
        test_p = prob.subset(perm[n_path:])
    if path == "interpolate":
        sequence = _interpolated_sequence(path_p, max_drop, path_span, num_candidates, **kw)
    else:
        sequence = _frontier_sequence(path_p, max_drop, path_span, kw.get("max_candidates", 256))
    seen: set[bytes] = {never_exit(prob.num_nodes).tobytes()}
    unique = [never_exit(prob.num_nodes)]
    for th in sequence:
        if th.tobytes() not in seen:
            seen.add(th.tobytes())
            unique.append(th)
    sequence = unique
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
        ok_k = reject_drop_above(n_plus, n_minus, n, max_drop, delta)
        cost = float(test_p.cost[ex].mean())
        log.append({"n_plus": n_plus, "n_minus": n_minus, "certified": ok_k, "rel_cost": cost})
        if not ok_k:
            break
        ub = drop_upper_bound(n_plus, n_minus, n, delta)
        certified += 1
        if cost < chosen_cost:
            chosen, chosen_cost, chosen_bound = th, cost, ub
    return RiskResult(chosen.copy(), certified, tested, chosen_bound, n_path, n, log)
