"""How far to trust a calibration target: repeat the calibration on random splits of the trace.

Each split calibrates on a random ``fraction`` of the samples (exactly as :func:`.api.calibrate`
would on the whole trace, same target and method) and scores the thresholds on the rest. The
distribution of the held-out drop and saving over the splits shows what the target means on new
data for a calibration set of that size (a little pessimistic for the whole trace, which is
larger). With ``hindsight`` each split also records the in-hindsight bound: the largest saving
the same policy reaches on the held-out part at the target drop, thresholds chosen with that
part's labels (:func:`.search.min_cost`) - what no calibration can beat on average.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .api import fit
from .search import Problem, min_cost

PERCENTILES = (25, 50, 75, 90)


def _dist(x: np.ndarray) -> dict[str, float]:
    out = {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)) if x.size > 1 else 0.0}
    for q in PERCENTILES:
        out[f"p{q}"] = float(np.percentile(x, q))
    return out


@dataclass
class SplitCheck:
    """Held-out figures of one calibration recipe over random splits."""

    target: dict[str, Any]  # the calibration target, as in the policy file
    method: str
    fraction: float
    n_calibrate: int
    n_held_out: int
    drops_pp: np.ndarray  # held-out drop of each split (pp)
    savings: np.ndarray  # held-out FLOPs saving of each split
    rel_flops: np.ndarray
    calibration_drops_pp: np.ndarray  # drop on the split's own calibration part
    hindsight: np.ndarray | None = None  # in-hindsight saving bound on each held-out part
    records: list[dict[str, Any]] = field(default_factory=list)

    def over_target(self) -> np.ndarray:
        """Per split: whether the held-out figure exceeds the target (drop, or FLOPs for a budget)."""
        if "max_accuracy_drop_pp" in self.target:
            return self.drops_pp > self.target["max_accuracy_drop_pp"] + 1e-9
        return self.rel_flops > self.target["flops_budget"] + 1e-9

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "method": self.method,
            "splits": int(self.drops_pp.size),
            "fraction": self.fraction,
            "n_calibrate": self.n_calibrate,
            "n_held_out": self.n_held_out,
            "held_out_drop_pp": _dist(self.drops_pp),
            "held_out_saving": _dist(self.savings),
            "calibration_drop_pp": _dist(self.calibration_drops_pp),
            "fraction_over_target": float(self.over_target().mean()),
        }
        if self.hindsight is not None:
            out["hindsight_saving"] = _dist(self.hindsight)
        return out


def check_splits(
    prob: Problem,
    n_splits: int,
    *,
    fraction: float = 0.5,
    seed: int = 0,
    hindsight: bool = False,
    **fit_kw: Any,
) -> SplitCheck:
    """Calibrate on ``n_splits`` random ``fraction``-parts of ``prob`` and score each on the rest.

    ``fit_kw`` are :func:`.api.fit`'s target and method arguments; split ``i`` uses seed ``seed + i``
    for its own folds or risk split.
    """
    if n_splits < 1:
        raise ValueError(f"--check-splits needs at least 1 split, got {n_splits}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the calibration fraction of a split must be in (0, 1), got {fraction}")
    n_cal = int(round(fraction * prob.n))
    if n_cal < 2 or prob.n - n_cal < 1:
        raise ValueError(f"splitting {prob.n} samples leaves too few to calibrate or score on; use a larger trace")
    rng = np.random.default_rng(seed)
    prob.order()  # sorted once; the splits derive theirs
    drops, savings, rel, cal_drops, hs, recs = [], [], [], [], [], []
    drop_target = fit_kw.get("max_drop_pp")
    for i in range(n_splits):
        perm = rng.permutation(prob.n)
        a, b = prob.subset(np.sort(perm[:n_cal])), prob.subset(np.sort(perm[n_cal:]))
        th, rec = fit(a, seed=seed + i, **fit_kw)
        c, d = b.evaluate(th)
        drops.append(d * 100.0)
        savings.append(1.0 - c)
        rel.append(c)
        cal_drops.append(a.evaluate(th)[1] * 100.0)
        recs.append(rec)
        if hindsight and drop_target is not None:
            hs.append(1.0 - min_cost(b, drop_target / 100.0).rel_cost)
    target = recs[0].get("target", {})
    return SplitCheck(
        target=target,
        method=str(recs[0].get("method")),
        fraction=fraction,
        n_calibrate=n_cal,
        n_held_out=prob.n - n_cal,
        drops_pp=np.asarray(drops),
        savings=np.asarray(savings),
        rel_flops=np.asarray(rel),
        calibration_drops_pp=np.asarray(cal_drops),
        hindsight=np.asarray(hs) if hs else None,
        records=recs,
    )
