"""Cross-fitting: its pieces (isotonic fit, one-path solver), its record, and old policy files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distree.calibration import CrossFit, TargetSolver, calibrate, cross_fit, problem_for
from distree.calibration.crossfit import isotonic
from distree.calibration.search import min_cost
from distree.evaluation import synthetic_trace
from distree.policies import create_policy, load_policy


@pytest.fixture(scope="module")
def prob():
    return problem_for(create_policy("confidence", 4), synthetic_trace(3000, 4, seed=11))


def test_isotonic_is_the_monotone_least_squares_fit():
    np.testing.assert_allclose(isotonic([1, 3, 2, 4]), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(isotonic([3, 2, 1]), [2, 2, 2])
    np.testing.assert_allclose(isotonic([0, 1, 2]), [0, 1, 2])
    y = np.random.default_rng(0).normal(size=40).cumsum()
    f = isotonic(y)
    assert np.all(np.diff(f) >= -1e-12) and f.mean() == pytest.approx(y.mean())


def test_one_path_solver_matches_the_bisection_search(prob):
    ts = TargetSolver(prob)
    for t in (0.0, 0.0025, 0.005, 0.01, 0.02):
        th = ts.solve(t)
        c, d = prob.evaluate(th)
        assert d <= t + 1e-12
        assert 1.0 - c >= 1.0 - min_cost(prob, t).rel_cost - 0.02  # within 2 points of the full search


def test_sorted_orders_of_subsets_equal_a_fresh_sort(prob):
    prob.order()
    idx = np.flatnonzero(np.random.default_rng(1).random(prob.n) < 0.6)
    sub = prob.subset(idx)
    assert sub._order is not None
    np.testing.assert_array_equal(sub._order, np.argsort(-sub.scores, axis=0, kind="stable"))


def test_cross_fit_result_and_record(prob):
    res = cross_fit(prob, 0.005, folds=4, seed=3)
    assert res.internal_target is not None and res.internal_target <= 0.005 + 1e-12
    assert res.expected_drop <= 0.005 + 1e-12
    rec = res.record(seed=3)
    assert rec["folds"] == 4 and rec["seed"] == 3 and len(rec["grid"]) >= 5
    assert rec["held_out_drop_pp_sd"] > 0.0 and 0.0 < rec["held_out_saving"] < 1.0
    # the thresholds are the whole trace refitted at the internal target
    np.testing.assert_array_equal(res.thresholds, TargetSolver(prob).solve(res.internal_target))
    # reproducible, and a stricter request gets a stricter internal target
    again = cross_fit(prob, 0.005, folds=4, seed=3)
    np.testing.assert_array_equal(again.thresholds, res.thresholds)
    cf = CrossFit(prob, folds=4, seed=3)
    assert cf.calibrate(0.0).internal_target is None or cf.calibrate(0.0).internal_target <= res.internal_target
    with pytest.raises(ValueError, match="at least 2 folds"):
        CrossFit(prob, folds=1)
    with pytest.raises(ValueError, match="in-sample"):
        CrossFit(prob.subset(np.arange(5)), folds=5)


def test_cross_fit_is_the_default_and_in_sample_stays_reachable():
    val = synthetic_trace(2000, 4, seed=21)
    cf = calibrate(create_policy("distree", 4), val, max_drop_pp=1.0)
    ins = calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, method="in-sample")
    assert cf.calibration["method"] == "cross-fit" and ins.calibration["method"] == "in-sample"
    assert "cross_fit" not in ins.calibration
    assert ins.calibration["validation"]["drop_pp"] <= 1.0 + 1e-9
    # cross-fitting spends less of the target on the calibration trace itself
    assert cf.calibration["validation"]["drop_pp"] <= ins.calibration["validation"]["drop_pp"] + 1e-9
    with pytest.raises(ValueError, match="--method must be one of"):
        calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, method="bogus")
    with pytest.raises(ValueError, match="--method"):
        calibrate(create_policy("distree", 4), val, max_drop_pp=1.0, confidence=0.9, method="in-sample")


def test_policy_files_written_before_cross_fitting_still_load(tmp_path):
    old = {
        "format": "distree-policy/1",
        "policy": "distree-conf",
        "num_nodes": 4,
        "deployable": True,
        "thresholds": [0.937, 0.333, 0.108, None],
        "thresholds_inf": [None, None, None, "-inf"],
        "params": {"alpha": 0.5, "measure": "feat-l2", "first": "confidence"},
        "calibration": {
            "method": "lagrangian",
            "target": {"max_accuracy_drop_pp": 0.5},
            "validation": {"accuracy": 0.857, "drop_pp": 0.5, "saving": 0.64},
            "seconds": 0.2,
        },
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    pol = load_policy(path)
    assert pol.name == "distree-conf" and pol.calibration["method"] == "lagrangian"
    np.testing.assert_allclose(pol.thresholds[:3], [0.937, 0.333, 0.108])
    # and a cross-fitted file round-trips
    cal = calibrate(create_policy("confidence", 4), synthetic_trace(800, 4, seed=2), max_drop_pp=0.5)
    back = load_policy(cal.save(tmp_path / "new.json"))
    assert back.calibration["cross_fit"] == json.loads(json.dumps(cal.calibration["cross_fit"]))
