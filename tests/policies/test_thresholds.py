"""The exit rule and the cost of exits, by hand on a 3-node profile; every user agrees with them."""

from __future__ import annotations

import numpy as np
import pytest

from distree.models.cost import CostProfile
from distree.policies import ExitInputs, create_policy, exit_mask, exit_nodes, node_costs, relative_costs

# segments 10, 20, 30 FLOPs; heads 1, 2, 3; hops 100, 50 bytes
COST = CostProfile(segment_flops=[10, 20, 30], exit_flops=[1, 2, 3], hop_bytes=[100, 50])


def test_exit_nodes_first_threshold_reached_else_last():
    scores = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.0], [0.1, 0.1, 0.0], [0.5, 0.9, 0.0]])
    np.testing.assert_array_equal(exit_nodes(scores, [0.5, 0.5, np.inf]), [0, 1, 2, 0])  # reaching = exiting
    np.testing.assert_array_equal(exit_nodes(scores, [np.inf, np.inf, np.inf]), [2, 2, 2, 2])
    np.testing.assert_array_equal(exit_nodes(scores, [-np.inf, 0.5, 0.5]), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="do not match"):
        exit_nodes(scores, [0.5, 0.5])


def test_exit_mask_per_node_is_the_same_rule():
    scores = np.array([[0.9, 0.1, -np.inf], [0.1, 0.8, 0.0]])
    th = np.array([0.5, 0.8, np.inf])
    full = exit_mask(scores, th)
    np.testing.assert_array_equal(full, [[True, False, True], [False, True, True]])
    for i in range(3):
        np.testing.assert_array_equal(exit_mask(scores[:, i], th, node=i), full[:, i])
    with pytest.raises(ValueError, match="out of range"):
        exit_mask(scores[:, 0], th, node=3)


def test_costs_by_hand():
    np.testing.assert_allclose(node_costs(COST), [11, 33, 66])  # segments + every head up to i
    np.testing.assert_allclose(node_costs(COST, "final"), [11, 32, 63])  # segments + the answering head only
    np.testing.assert_allclose(node_costs(COST, "visited"), COST.exit_cost())
    np.testing.assert_allclose(relative_costs(COST, "final"), [11 / 63, 32 / 63, 1.0])
    assert COST.last_exit_cost() == 63
    with pytest.raises(ValueError, match="heads must be one of visited, final"):
        node_costs(COST, "all")


def test_policies_declare_their_head_accounting():
    assert create_policy("last-exit", 3).heads == "final" and create_policy("last-exit", 3).baseline
    for name in ("confidence", "distree", "distree-conf", "oracle", "random"):
        pol = create_policy(name, 3)
        assert pol.heads == "visited" and not pol.baseline, name


def test_decide_applies_the_same_rule_as_exit_nodes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3, 5)).astype(np.float32)
    pol = create_policy("confidence", 3, thresholds=[0.5, 0.4, np.inf])
    want = exit_nodes(pol.score_matrix(logits), pol.thresholds)
    got = np.full(200, -1)
    for i in range(3):
        d = pol.decide(ExitInputs(node=i, logits=logits[:, i]))
        got[d.exit & (got < 0)] = i
    np.testing.assert_array_equal(got, want)
    assert len(set(want.tolist())) == 3
