"""Metric functions on a 3-sample, 3-exit trace whose answers are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distree.evaluation import (
    evaluate_exits,
    evaluate_policy,
    exit_histogram,
    last_exit_metrics,
)
from distree.models.cost import CostProfile
from distree.policies import create_policy
from distree.trace import Trace

# segments 10, 20, 30 FLOPs; heads 1, 2, 3; hops 100, 50 bytes
COST = CostProfile(segment_flops=[10, 20, 30], exit_flops=[1, 2, 3], hop_bytes=[100, 50])
# correct[j, i]: sample 0 right everywhere, sample 1 right from exit 1, sample 2 right only at exit 0
CORRECT = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 0]], dtype=bool)


def hand_trace() -> Trace:
    labels = np.array([0, 1, 2])
    logits = np.zeros((3, 3, 3), np.float32)
    for j in range(3):
        for i in range(3):
            pred = labels[j] if CORRECT[j, i] else (labels[j] + 1) % 3
            logits[j, i, pred] = 2.0 + i + (3 if j == 0 else 0)
    return Trace(logits=logits, features=[np.ones((3, 2), np.float32)] * 3, labels=labels, cost=COST)


def test_metrics_by_hand():
    m = evaluate_exits(CORRECT, COST, np.array([0, 1, 0]))
    assert m.accuracy == pytest.approx(1.0)  # 0 right at 0, 1 right at 1, 2 right at 0
    assert m.last_exit_accuracy == pytest.approx(2 / 3)
    assert m.drop_pp == pytest.approx(-100 / 3)
    assert m.mean_flops == pytest.approx((11 + 33 + 11) / 3)
    assert m.rel_flops == pytest.approx(55 / 3 / 63)
    assert m.saving == pytest.approx(1 - 55 / 189)
    assert m.mean_bytes == pytest.approx((0 + 100 + 0) / 3)
    assert m.last_exit_bytes == 150
    np.testing.assert_allclose(m.exit_hist, [2 / 3, 1 / 3, 0])
    base = last_exit_metrics(CORRECT, COST)
    assert base.rel_flops == pytest.approx(1.0) and base.saving == pytest.approx(0.0) and base.drop_pp == 0.0
    # an early-exit policy that never exits early pays every head: slightly more than last exit
    assert evaluate_exits(CORRECT, COST, np.array([2, 2, 2])).rel_flops == pytest.approx(66 / 63)
    np.testing.assert_allclose(exit_histogram(np.array([2, 2, 0]), 3), [1 / 3, 0, 2 / 3])


def test_policies_on_hand_trace():
    tr = hand_trace()
    le = evaluate_policy(create_policy("last-exit", 3), tr)
    assert le.rel_flops == pytest.approx(1.0) and le.accuracy == pytest.approx(2 / 3)
    orc = evaluate_policy(create_policy("oracle", 3), tr)
    assert orc.accuracy == pytest.approx(1.0) and orc.mean_flops == pytest.approx(55 / 3)


def test_report_files(tmp_path):
    from distree.calibration import calibrate
    from distree.evaluation.report import build_report, write_report
    from distree.evaluation.synthetic import synthetic_trace

    val, test = synthetic_trace(800, 4, seed=1), synthetic_trace(800, 4, seed=2)
    pols = [(n, calibrate(create_policy(n, 4), val, max_drop_pp=1.0)) for n in ("confidence", "distree")]
    pols += [("oracle", create_policy("oracle", 4)), ("last-exit", create_policy("last-exit", 4))]
    rep = build_report(test, pols, fit_trace=val)
    paths = write_report(rep, tmp_path)
    md = paths["markdown"].read_text()
    assert "| distree |" in md and "oracle (not deployable)" in md
    js = json.loads(paths["json"].read_text())
    assert {r["label"] for r in js["results"]} == {"confidence", "distree", "oracle", "last-exit"}
    assert len(js["results"][0]["sweep"]) > 3
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
