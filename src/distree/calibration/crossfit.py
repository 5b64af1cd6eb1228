"""Cross-fitted calibration: thresholds whose *expected held-out* accuracy drop is the requested one.

Fitting thresholds to a drop of exactly EPS on the calibration trace and reading the drop off the
same trace is optimistic: the search picks the threshold vector whose drop on *these* samples
happens to be low, so on new data the drop is larger (selection bias; on a 4-exit CIFAR-10
WRN-16-1 calibrated on 7,500 images at 0.5 pp it averaged 0.74 pp on another 7,500). Cross-fitting
measures and removes that bias on the calibration trace alone:

1. The trace is cut into K folds (``repeats`` times, at random, seeded). For every fold, the
   thresholds are fitted on the other K - 1 folds and the exits of the held-out fold recorded;
   pooling the held-out folds gives, for an *internal* target t, the held-out drop D(t) and
   saving S(t) of the procedure "fit to t".
2. D is measured on a grid of internal targets at and below EPS (:data:`OFFSETS_PP`), made
   monotone in t by isotonic regression, and the internal target t* where that curve reaches EPS
   is found by linear interpolation (the expected held-out drop; D(t*) itself is measured too).
3. The thresholds are refitted on the whole trace at t*.

Because the folds' thresholds are fitted on (K - 1) / K of the samples, their selection bias is a
little larger than the refit's: D(t*) estimates the held-out drop slightly conservatively.

One Lagrangian path per fit (:class:`TargetSolver`: coordinate descent at a fixed, warm-started
grid of multipliers) serves every internal target, so a whole cross-fit costs about K + 1
ordinary calibrations.

With a *path trace* (other samples of the same model, e.g. its training split: :func:`trace_path`)
the threshold vectors a fit may choose are fixed in advance: the cheapest thresholds on those
samples for a range of drops, one line through threshold space. A fit then only picks how far
along that line to go (:class:`PathSolver`), so the calibration samples set one number instead of
one threshold per node: less of their noise goes into the thresholds, and on the CIFAR-10 WRN-16-1
the saving at about the same held-out drop rose by 1.5 points (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..policies.thresholds import exit_nodes
from .search import Problem, Solution, _solve, never_exit, polish

#: multipliers of the Lagrangian path behind every fit (accurate to cheap)
PATH_LAMS = tuple(float(x) for x in np.geomspace(1e4, 0.1, 28))
#: internal targets tried, as offsets from the requested drop (percentage points)
OFFSETS_PP = (0.0, -0.1, -0.2, -0.3, -0.5, -0.75, -1.0, -1.5, -2.0, -3.0)


def isotonic(y: list[float] | np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit to ``y`` (equal weights; pool adjacent violators)."""
    vals: list[float] = []
    counts: list[int] = []
    for v in np.asarray(y, dtype=np.float64):
        vals.append(float(v))
        counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            c = counts[-2] + counts[-1]
            vals[-2] = (vals[-2] * counts[-2] + vals[-1] * counts[-1]) / c
            counts[-2] = c
            vals.pop()
            counts.pop()
    return np.repeat(vals, counts)


class TargetSolver:
    """The cheapest thresholds on ``prob`` for any accuracy-drop target, from one Lagrangian path.

    The path is solved once (warm-started coordinate descent at each multiplier of ``lams``); a
    target is then the cheapest path point within it, polished to spend the slack left
    (:func:`distree.calibration.search.polish`). About as good as :func:`min_cost` and, for many
    targets, much cheaper.
    """

    def __init__(self, prob: Problem, lams: tuple[float, ...] = PATH_LAMS, *, max_candidates: int | None = 256):
        self.prob = prob
        self.max_candidates = max_candidates
        nev = never_exit(prob.num_nodes)
        self.path: list[Solution] = [Solution(nev, *prob.evaluate(nev), np.inf)]
        init = None
        for lam in lams:
            sol = _solve(prob, float(lam), init, max_candidates=max_candidates)
            init = sol.thresholds
            self.path.append(sol)

    def solve(self, max_drop: float) -> np.ndarray:
        feas = [s for s in self.path if s.drop <= max_drop + 1e-12]
        start = min(feas, key=lambda s: s.rel_cost) if feas else self.path[0]
        th = polish(self.prob, start.thresholds, max_drop, max_candidates=self.max_candidates)
        c, d = self.prob.evaluate(th)
        return th if d <= max_drop + 1e-12 and c < start.rel_cost else start.thresholds.copy()


def trace_path(
    path_prob: Problem, max_drop: float, *, num_targets: int = 181, max_candidates: int | None = 256
) -> np.ndarray:
    """(K, N) candidate thresholds from other samples of the model, most accurate first.

    The cheapest thresholds on ``path_prob`` (:class:`TargetSolver`) for ``num_targets`` drops from
    -0.5 pp up to max(4 pp, 8 x ``max_drop``) (drops on a model's training split read higher than
    on new data, about twice on the CIFAR-10 WRN-16-1, so the line reaches well past the request),
    "never exit early" first, repeats dropped, ordered by decreasing cost on ``path_prob``.
    """
    key = (round(float(max_drop), 12), num_targets, max_candidates)
    cache: dict[tuple[float, int, int | None], np.ndarray] = path_prob.__dict__.setdefault("_trace_paths", {})
    if key in cache:  # one path trace serves many calibrations (check_splits)
        return cache[key]
    solver = TargetSolver(path_prob, max_candidates=max_candidates)
    high = max(0.04, 8.0 * max_drop)
    cands = [never_exit(path_prob.num_nodes)]
    seen = {cands[0].tobytes()}
    for t in np.linspace(-0.005, high, num_targets):
        th = solver.solve(float(t))
        if th.tobytes() not in seen:
            seen.add(th.tobytes())
            cands.append(th)
    costs = [path_prob.evaluate(th)[0] for th in cands]
    order = sorted(range(len(cands)), key=lambda k: (-costs[k], k))
    cache[key] = np.stack([cands[k] for k in order])
    return cache[key]


class PathSolver:
    """:class:`TargetSolver`'s ``solve`` over a fixed family of candidates (:func:`trace_path`).

    For a target, the candidate cheapest on ``prob`` among those whose drop on ``prob`` is within it.
    """

    def __init__(self, prob: Problem, candidates: np.ndarray):
        self.candidates = np.asarray(candidates, dtype=np.float64)
        if self.candidates.ndim != 2 or self.candidates.shape[1] != prob.num_nodes:
            raise ValueError(
                f"path candidates have shape {self.candidates.shape}, the calibration trace has "
                f"{prob.num_nodes} exits: "
                "trace the same checkpoint (distree trace --split train)"
            )
        rows = np.arange(prob.n)
        ex = np.stack([exit_nodes(prob.scores, th) for th in self.candidates])  # (K, n)
        self.drops = prob.correct[:, -1].mean() - prob.correct[rows[None, :], ex].mean(axis=1)  # (K,)
        self.costs = prob.cost[ex].mean(axis=1)  # (K,)

    def solve(self, max_drop: float) -> np.ndarray:
        ok = np.flatnonzero(self.drops <= max_drop + 1e-12)
        if ok.size == 0:
            return never_exit(self.candidates.shape[1])
        return self.candidates[ok[np.argmin(self.costs[ok])]].copy()


@dataclass
class HeldOut:
    """Held-out figures of "fit to internal target t" over the folds."""

    drop: float  # mean over repeats of the pooled held-out drop (fraction)
    saving: float  # likewise, FLOPs saving vs last exit
    fold_drops: np.ndarray  # (repeats * folds,) drop on each held-out fold
    fold_savings: np.ndarray


@dataclass
class CrossFitResult:
    thresholds: np.ndarray
    max_drop: float  # requested (fraction)
    internal_target: float | None  # fraction; None: no internal target met the request, never exit early
    expected_drop: float  # the monotone (isotonic) fit of the held-out drops at the internal target (fraction)
    held_out: HeldOut  # measured at the internal target
    folds: int
    repeats: int
    grid: list[dict[str, float]] = field(default_factory=list)

    def record(self, seed: int) -> dict[str, Any]:
        """The policy file's ``calibration.cross_fit`` entry."""
        h = self.held_out
        return {
            "folds": self.folds,
            "repeats": self.repeats,
            "seed": seed,
            "internal_target_pp": None if self.internal_target is None else self.internal_target * 100.0,
            "expected_drop_pp": self.expected_drop * 100.0,
            "held_out_drop_pp": h.drop * 100.0,
            "held_out_drop_pp_sd": float(h.fold_drops.std(ddof=1) * 100.0) if h.fold_drops.size > 1 else 0.0,
            "held_out_saving": h.saving,
            "held_out_saving_sd": float(h.fold_savings.std(ddof=1)) if h.fold_savings.size > 1 else 0.0,
            "grid": self.grid,
        }


class CrossFit:
    """Fold solvers of one calibration problem, shared by every requested drop."""

    def __init__(
        self,
        prob: Problem,
        *,
        folds: int = 5,
        repeats: int = 1,
        seed: int = 0,
        max_candidates: int | None = 256,
        lams: tuple[float, ...] = PATH_LAMS,
        candidates: np.ndarray | None = None,
    ) -> None:
        if folds < 2:
            raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
        if repeats < 1:
            raise ValueError(f"cross-fitting needs at least 1 repeat, got {repeats}")
        if prob.n < 2 * folds:
            raise ValueError(
                f"cross-fitting with {folds} folds needs at least {2 * folds} calibration samples, got {prob.n}; "
                "use a larger trace or --method in-sample"
            )
        self.prob, self.folds, self.repeats = prob, folds, repeats
        self.max_candidates, self.lams, self.candidates = max_candidates, lams, candidates
        rng = np.random.default_rng(seed)
        prob.order()  # sorted once; every fold's order is derived from it
        self.splits: list[list[tuple[np.ndarray, TargetSolver | PathSolver]]] = []
        for _ in range(repeats):
            fold = rng.permutation(prob.n) % folds
            rep = []
            for k in range(folds):
                tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                rep.append((te, self._solver(prob.subset(tr))))
            self.splits.append(rep)
        self._cache: dict[float, HeldOut] = {}
        self._full: TargetSolver | PathSolver | None = None
        self._last_ok = prob.correct[:, -1]

    def _solver(self, prob: Problem) -> TargetSolver | PathSolver:
        if self.candidates is not None:
            return PathSolver(prob, self.candidates)
        return TargetSolver(prob, self.lams, max_candidates=self.max_candidates)

    def held_out(self, t: float) -> HeldOut:
        """Held-out figures of fitting to internal target ``t`` (fraction)."""
        key = round(float(t), 12)
        if key in self._cache:
            return self._cache[key]
        p = self.prob
        rows = np.arange(p.n)
        drops, savings, fd, fs = [], [], [], []
        for rep in self.splits:
            ex = np.empty(p.n, dtype=np.int64)
            for te, solver in rep:
                ex[te] = exit_nodes(p.scores[te], solver.solve(key))
                ok = p.correct[te, ex[te]]
                fd.append(float(self._last_ok[te].mean() - ok.mean()))
                fs.append(1.0 - float(p.cost[ex[te]].mean()))
            drops.append(float(self._last_ok.mean() - p.correct[rows, ex].mean()))
            savings.append(1.0 - float(p.cost[ex].mean()))
        h = HeldOut(float(np.mean(drops)), float(np.mean(savings)), np.asarray(fd), np.asarray(fs))
        self._cache[key] = h
        return h

    def never_exit_figures(self) -> HeldOut:
        nn_ = self.prob.num_nodes
        k = self.repeats * self.folds
        s = 1.0 - float(self.prob.cost[nn_ - 1])
        return HeldOut(0.0, s, np.zeros(k), np.full(k, s))

    def internal_target(
        self, max_drop: float, offsets_pp: tuple[float, ...] = OFFSETS_PP
    ) -> tuple[float | None, float]:
        """The internal target whose held-out drop reaches ``max_drop`` (fraction), and that drop.

        The held-out drops on the grid are made monotone in the internal target by isotonic
        regression (pool adjacent violators: single fold results are noisy step functions) and
        the target where that curve reaches ``max_drop`` is found by linear interpolation. Returns
        (None, 0) if no internal target on the grid meets the request.
        """
        ts = np.sort(np.unique(max_drop + np.asarray(offsets_pp, dtype=np.float64) / 100.0))
        d = isotonic([self.held_out(t).drop for t in ts])
        ok = np.flatnonzero(d <= max_drop + 1e-12)
        if ok.size == 0:
            return None, 0.0
        j = int(ok[-1])
        if j == ts.size - 1:
            return float(ts[j]), float(d[j])
        w = (max_drop - d[j]) / (d[j + 1] - d[j])
        return float(ts[j] + w * (ts[j + 1] - ts[j])), float(max_drop)

    def calibrate(self, max_drop: float, offsets_pp: tuple[float, ...] = OFFSETS_PP) -> CrossFitResult:
        t, smooth = self.internal_target(max_drop, offsets_pp)
        if t is None:
            th = never_exit(self.prob.num_nodes)
            h = self.never_exit_figures()
        else:
            if self._full is None:
                self._full = self._solver(self.prob)
            th = self._full.solve(t)
            h = self.held_out(t)
        grid = [
            {"internal_target_pp": k * 100.0, "held_out_drop_pp": g.drop * 100.0, "held_out_saving": g.saving}
            for k, g in sorted(self._cache.items())
        ]
        return CrossFitResult(th, max_drop, t, smooth, h, self.folds, self.repeats, grid)


def cross_fit(
    prob: Problem,
    max_drop: float,
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    max_candidates: int | None = 256,
    candidates: np.ndarray | None = None,
) -> CrossFitResult:
    """Thresholds whose cross-validated held-out drop on ``prob`` is at most ``max_drop`` (fraction), cheapest.

    ``candidates``: fit along this fixed family (:func:`trace_path`) instead of searching freely.
    """
    cf = CrossFit(prob, folds=folds, repeats=repeats, seed=seed, max_candidates=max_candidates, candidates=candidates)
    return cf.calibrate(max_drop)
