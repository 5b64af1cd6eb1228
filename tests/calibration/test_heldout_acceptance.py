"""Acceptance: what a calibration target means on data the calibration never saw.

A synthetic population with known structure (:func:`distree.evaluation.synthetic_trace`) is
re-split at random 50 times into a calibration half and a scored half:

- the default mode (cross-fit) keeps the *held-out* drop at the target on average (mean <= 0.5 pp,
  75th percentile <= 0.6 pp) while saving within 3 points of the in-hindsight bound (the most the
  same policy saves on the scored half at 0.5 pp with thresholds chosen on that half's labels);
  the in-sample mode, for contrast, overshoots;
- with a path trace (other samples: a model's training split, in use) the same holds while the
  fits choose only along the line of thresholds cheapest there;
- risk control holds its guarantee (violations within DELTA) and its frontier path saves more
  than the earlier interpolated path.
"""

from __future__ import annotations

import numpy as np
import pytest

from distree.calibration import check_splits, learn_then_test, problem_for
from distree.evaluation import synthetic_trace
from distree.policies import create_default_policy

TARGET_PP = 0.5


@pytest.fixture(scope="module")
def population():
    return problem_for(create_default_policy(4), synthetic_trace(10_000, 4, seed=5))


@pytest.mark.slow
def test_cross_fit_meets_the_target_on_held_out_data(population):
    res = check_splits(population, 50, fraction=0.5, seed=0, hindsight=True, max_drop_pp=TARGET_PP)
    s = res.summary()
    assert res.method == "cross-fit" and s["splits"] == 50
    drop, saving, bound = s["held_out_drop_pp"], s["held_out_saving"], s["hindsight_saving"]
    # measured (loaded 2-core machine): mean 0.47 pp, p75 0.54 pp, saving 27.2% vs bound 28.6%
    assert drop["mean"] <= TARGET_PP
    assert drop["p75"] <= 0.6
    assert saving["mean"] >= bound["mean"] - 0.03
    assert saving["mean"] > 0.15  # it does exit early
    # the same splits calibrated in-sample: the drop on the calibration half is the target, the held-out one is not
    ins = check_splits(population, 50, fraction=0.5, seed=0, max_drop_pp=TARGET_PP, method="in-sample").summary()
    assert ins["calibration_drop_pp"]["p90"] <= TARGET_PP + 1e-9
    assert ins["held_out_drop_pp"]["mean"] > drop["mean"] + 0.05
    assert ins["fraction_over_target"] > s["fraction_over_target"]


@pytest.mark.slow
def test_cross_fit_along_a_path_trace_meets_the_target_and_saves_more():
    """The default mode with the thresholds' line taken from other samples of the population."""
    pool = problem_for(create_default_policy(4), synthetic_trace(15_000, 4, seed=5))
    perm = np.random.default_rng(3).permutation(pool.n)
    population, other = pool.subset(np.sort(perm[:10_000])), pool.subset(np.sort(perm[10_000:]))
    kw = {"fraction": 0.5, "seed": 0, "hindsight": True, "max_drop_pp": TARGET_PP}
    res = check_splits(population, 200, path_prob=other, **kw)  # a fit along a line is cheap: more splits
    s = res.summary()
    assert res.records[0]["search"] == "path trace"
    drop, saving, bound = s["held_out_drop_pp"], s["held_out_saving"], s["hindsight_saving"]
    free = check_splits(population, 50, **kw).summary()
    # measured: mean 0.50 pp, p75 0.58 pp, saving 27.9% vs bound 28.7% (free search, 50 splits: 27.1%)
    assert drop["mean"] <= TARGET_PP
    assert drop["p75"] <= 0.6
    assert saving["mean"] >= bound["mean"] - 0.03
    assert saving["mean"] >= free["held_out_saving"]["mean"] - 0.005


@pytest.mark.slow
def test_risk_control_keeps_its_guarantee_and_saves_more_on_the_frontier_path():
    """P(drop > EPS) <= DELTA over random calibration sets; the population is the rest of a large pool."""
    pool = problem_for(create_default_policy(4), synthetic_trace(20_000, 4, seed=7))
    eps, delta, n_cal, reps = TARGET_PP / 100.0, 0.1, 4000, 50
    rng = np.random.default_rng(1)
    pool.order()
    n_path = 4000  # other samples of the same population (a model's training split, in use)
    out: dict[str, list[tuple[float, float]]] = {"frontier": [], "interpolate": [], "path-trace": []}
    for r in range(reps):
        perm = rng.permutation(pool.n)
        cal, rest = pool.subset(np.sort(perm[:n_cal])), pool.subset(np.sort(perm[n_cal + n_path :]))
        other = pool.subset(np.sort(perm[n_cal : n_cal + n_path]))
        for path in out:
            if path == "path-trace":
                res = learn_then_test(cal, eps, delta, seed=r, path_prob=other)
                assert (res.n_path, res.n_test) == (n_path, n_cal)  # every calibration sample tests
            else:
                res = learn_then_test(cal, eps, delta, seed=r, path=path)
            c, d = rest.evaluate(res.thresholds)
            out[path].append((d, 1.0 - c))
    fr, old, ext = (np.asarray(out[k]) for k in ("frontier", "interpolate", "path-trace"))
    # measured: 0 of 50 splits over EPS on any path; mean saving 22.6% (frontier) vs 19.2% (interpolate),
    # 23.6% with the candidates ordered on other samples
    for arm in (fr, ext):
        assert (arm[:, 0] > eps).mean() <= delta
    assert fr[:, 1].mean() > old[:, 1].mean()
    assert ext[:, 1].mean() > fr[:, 1].mean()
    assert fr[:, 1].mean() > 0.15
