"""Calibration on synthetic traces: targets met, budgets met, speed, risk-control guarantee."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from distree.calibration import (
    PathSolver,
    binom_lower,
    binom_upper,
    calibrate,
    drop_upper_bound,
    learn_then_test,
    problem_for,
    reject_drop_above,
    trace_path,
)
from distree.evaluation import evaluate_policy, synthetic_trace
from distree.policies import create_policy, exit_nodes


@pytest.fixture(scope="module")
def val_test():
    return synthetic_trace(3000, 4, seed=11), synthetic_trace(3000, 4, seed=12)


@pytest.mark.parametrize("name", ["distree", "distree-conf", "confidence", "entropy", "similarity", "patience"])
def test_accuracy_target_met_on_calibration_data_and_saves(val_test, name):
    val, test = val_test
    pol = calibrate(create_policy(name, 4), val, max_drop_pp=1.0)
    v = pol.calibration["validation"]
    assert v["drop_pp"] <= 1.0 + 1e-9
    assert v["saving"] > (0.05 if name != "patience" else -0.01)  # patience may find nothing to save here
    assert pol.calibration["target"] == {"max_accuracy_drop_pp": 1.0}
    m = evaluate_policy(pol, test)  # same distribution: close to the target
    assert m.drop_pp <= 2.5 and m.saving > (0.0 if name != "patience" else -0.01)


def test_tighter_target_costs_more(val_test):
    val, _ = val_test
    savings = [
        calibrate(create_policy("distree", 4), val, max_drop_pp=e).calibration["validation"]["saving"]
        for e in (0.0, 0.5, 2.0, 5.0)
    ]
    assert savings == sorted(savings)


def test_flops_budget_met_and_maximises_accuracy(val_test):
    val, _ = val_test
    for b in (0.4, 0.6, 0.8):
        pol = calibrate(create_policy("confidence", 4), val, flops_budget=b)
        assert pol.calibration["validation"]["rel_flops"] <= b + 1e-9
    lo = calibrate(create_policy("confidence", 4), val, flops_budget=0.4).calibration["validation"]["accuracy"]
    hi = calibrate(create_policy("confidence", 4), val, flops_budget=0.8).calibration["validation"]["accuracy"]
    assert hi >= lo
    with pytest.raises(ValueError, match="below the cheapest"):
        calibrate(create_policy("confidence", 4), val, flops_budget=0.01)


def test_calibration_argument_errors(val_test):
    val, _ = val_test
    pol = create_policy("distree", 4)
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate(pol, val)
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate(pol, val, max_drop_pp=0.5, flops_budget=0.5)
    with pytest.raises(ValueError, match="confidence"):
        calibrate(pol, val, flops_budget=0.5, confidence=0.9)
    with pytest.raises(ValueError, match="1 - DELTA"):
        calibrate(pol, val, max_drop_pp=0.5, confidence=1.5)
    with pytest.raises(ValueError, match="nodes"):
        calibrate(create_policy("distree", 3), val, max_drop_pp=0.5)


def test_untunable_policies_keep_their_thresholds(val_test):
    val, _ = val_test
    orc = calibrate(create_policy("oracle", 4), val, max_drop_pp=0.5)
    np.testing.assert_array_equal(orc.thresholds, create_policy("oracle", 4).thresholds)
    le = calibrate(create_policy("last-exit", 4), val, max_drop_pp=0.5)
    assert le.calibration["validation"]["saving"] == pytest.approx(0.0)


def test_eight_nodes_calibrate_in_seconds():
    tr = synthetic_trace(10_000, 8, seed=3)
    t0 = time.perf_counter()
    pol = calibrate(create_policy("distree", 8), tr, max_drop_pp=0.5, method="in-sample")
    dt = time.perf_counter() - t0
    assert pol.calibration["validation"]["drop_pp"] <= 0.5 + 1e-9
    assert pol.calibration["validation"]["saving"] > 0.1
    assert dt < 30.0  # seconds on a loaded 2-core machine; a full 8-node grid would take hours
    # and it finds at least what a coarse brute-force search over a shared quantile finds
    prob = problem_for(create_policy("distree", 8), tr)
    best = 0.0
    for q in np.linspace(0.0, 1.0, 41):
        th = np.append(np.quantile(prob.scores[:, :-1], q, axis=0), -np.inf)
        c, d = prob.evaluate(th)
        if d <= 0.005:
            best = max(best, 1.0 - c)
    assert pol.calibration["validation"]["saving"] >= best - 1e-9


def _exact_binom_cdf(k: int, n: int, p: float) -> float:
    """P(Bin(n, p) <= k) summed term by term (independent of scipy)."""
    return float(sum(math.comb(n, j) * p**j * (1.0 - p) ** (n - j) for j in range(k + 1)))


# Clopper-Pearson bounds and drop bounds recorded from the previous hand-written implementation
# (log-space binomial sums + bisection); the scipy.stats version must reproduce them.
_CP_REFERENCE = [
    ((0, 100, 0.05), 0.029513049607039935, 0.0),
    ((3, 50, 0.1), 0.12875642258660266, 0.022243984694505836),
    ((40, 1000, 0.01), 0.056848069407538095, 0.026936137510986558),
    ((999, 1000, 0.05), 0.999948708021091, 0.9952650064245001),
    ((0, 10000, 0.1), 0.0002302320018434138, 0.0),
]
_DROP_BOUND_REFERENCE = [
    ((200, 200, 10000, 0.1), 0.00311279296875),
    ((30, 10, 2000, 0.1), 0.0195159912109375),
    ((5, 0, 500, 0.05), 0.028045654296875),
    ((12, 20, 3000, 0.2), -0.00086212158203125),
]


@pytest.mark.parametrize(("args", "upper", "lower"), _CP_REFERENCE)
def test_clopper_pearson_bounds_match_the_previous_implementation(args, upper, lower):
    k, n, a = args
    assert binom_upper(k, n, a) == pytest.approx(upper, rel=1e-10, abs=1e-14)
    assert binom_lower(k, n, a) == pytest.approx(lower, rel=1e-10, abs=1e-14)
    if n <= 1000 and k < n:  # the defining property, checked by an exact sum
        assert _exact_binom_cdf(k, n, binom_upper(k, n, a)) == pytest.approx(a, rel=1e-8)
    assert binom_upper(n, n, a) == 1.0 and binom_lower(0, n, a) == 0.0


@pytest.mark.parametrize(("args", "bound"), _DROP_BOUND_REFERENCE)
def test_drop_upper_bound_matches_the_previous_implementation(args, bound):
    assert drop_upper_bound(*args) == bound


def test_learn_then_test_matches_the_previous_implementation():
    prob = problem_for(create_policy("distree", 4), synthetic_trace(3000, 4, seed=11))
    res = learn_then_test(prob, 0.01, 0.1, seed=0, path="interpolate")
    np.testing.assert_allclose(
        res.thresholds, [0.8828211426734924, 0.9328779774368741, 0.9305693612286632, -np.inf], rtol=1e-12
    )
    assert (res.certified, res.tested, res.bound) == (24, 24, 0.00957489013671875)


def test_drop_test_is_sensible():
    # no discordant samples in 10,000: the drop is tiny with high confidence
    assert reject_drop_above(0, 0, 10_000, 0.005, 0.1)
    # as many losses as gains among 400 discordant samples of 10,000: the drop is near 0, bound below 1 pp
    ub = drop_upper_bound(200, 200, 10_000, 0.1)
    assert 0.0 < ub < 0.01
    assert not reject_drop_above(300, 100, 10_000, 0.005, 0.1)  # empirical drop 2 pp


@pytest.mark.slow
def test_risk_control_holds_its_guarantee_on_repeated_splits():
    """P(population drop > EPS) <= DELTA over random calibration sets from the same distribution."""
    pool = synthetic_trace(100_000, 4, seed=5)
    prob = problem_for(create_policy("distree", 4), pool)
    rows = np.arange(prob.n)
    eps, delta, n_cal, reps = 0.01, 0.2, 1500, 40
    rng = np.random.default_rng(0)
    violations, savings = 0, []
    for r in range(reps):
        idx = rng.choice(prob.n, n_cal, replace=False)
        res = learn_then_test(prob.subset(idx), eps, delta, seed=r)
        ex = exit_nodes(prob.scores, res.thresholds)
        true_drop = prob.correct[:, -1].mean() - prob.correct[rows, ex].mean()
        violations += bool(true_drop > eps)
        savings.append(1.0 - prob.cost[ex].mean())
    assert violations / reps <= delta + 0.1
    assert np.mean(savings) > 0.05  # and it is not vacuous: it does exit early


def test_risk_controlled_calibration_record(val_test):
    val, _ = val_test
    pol = calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, confidence=0.9)
    assert pol.calibration["method"] == "learn-then-test"
    risk = pol.calibration["risk"]
    assert risk["drop_upper_bound_pp"] <= 1.0 + 1e-9
    assert risk["n_path"] + risk["n_test"] == val.num_samples


def test_risk_control_orders_its_candidates_on_a_path_trace_and_tests_on_all_samples(val_test):
    val, other = val_test  # other: samples of the same population the calibration never sees
    val.meta.update(checkpoint="ck", split="val")
    other.meta.update(checkpoint="ck", split="train")
    pol = calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, confidence=0.9, path_trace=other)
    risk = pol.calibration["risk"]
    assert (risk["n_test"], risk["n_path"]) == (val.num_samples, other.num_samples)
    assert risk["path_samples"] == "path trace" and risk["path_fraction"] is None
    assert pol.calibration["path_trace"] == {"checkpoint": "ck", "split": "train", "num_samples": other.num_samples}
    assert risk["drop_upper_bound_pp"] <= 1.0 + 1e-9
    with pytest.raises(ValueError, match="holds the calibration samples"):
        calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, confidence=0.9, path_trace=val)
    with pytest.raises(ValueError, match="not --flops-budget"):
        calibrate(create_policy("distree", 4), val, flops_budget=0.6, path_trace=other)
    three = synthetic_trace(500, 3, seed=1)
    with pytest.raises(ValueError, match="same model|other exits or exit costs"):
        calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, confidence=0.9, path_trace=three)


def test_cross_fit_along_a_path_trace_chooses_only_its_thresholds(val_test):
    val, other = val_test
    val.meta.update(checkpoint="ck", split="val")
    other.meta.update(checkpoint="ck", split="train")
    pol = create_policy("distree-conf", 4)
    cands = trace_path(problem_for(pol, other), 0.01)
    assert np.isinf(cands[0][:-1]).all()  # "never exit early" first
    costs = [problem_for(pol, other).evaluate(th)[0] for th in cands]
    assert np.all(np.diff(costs) <= 1e-12) and len(cands) > 10  # most accurate to cheapest
    for method in ("cross-fit", "in-sample"):
        cal = calibrate(pol, val, max_drop_pp=1.0, method=method, path_trace=other)
        assert any(np.array_equal(cal.thresholds, th) for th in cands), method
        assert cal.calibration["search"] == "path trace"
    cf = calibrate(pol, val, max_drop_pp=1.0, path_trace=other).calibration
    assert (
        cf["method"] == "cross-fit"
        and cf["cross_fit"]["path_candidates"] == len(cands)
        and cf["cross_fit"]["internal_target_pp"] <= 1.0 + 1e-9
    )
    # the fit is one step along the line: the drop on the calibration trace never exceeds the internal target
    ps = PathSolver(problem_for(pol, val), cands)
    th = ps.solve(0.004)
    assert problem_for(pol, val).evaluate(th)[1] <= 0.004 + 1e-12
    assert np.array_equal(ps.solve(-1.0), cands[0])  # nothing meets the target: never exit early
    with pytest.raises(ValueError, match="exits"):
        PathSolver(problem_for(pol, val), cands[:, :2])


@pytest.mark.parametrize("name", ["distree-conf", "confidence", "random", "last-exit", "oracle"])
def test_validation_record_equals_offline_evaluation(val_test, name):
    """calibration computes its record without importing evaluation; the figures are evaluation's."""
    val, _ = val_test
    pol = calibrate(create_policy(name, 4), val, max_drop_pp=0.5)
    m = evaluate_policy(pol, val)
    v = pol.calibration["validation"]
    for k in ("accuracy", "last_exit_accuracy", "drop_pp", "rel_flops", "saving", "mean_bytes"):
        assert v[k] == pytest.approx(getattr(m, k), rel=1e-12, abs=1e-12), k
