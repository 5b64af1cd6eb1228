"""Every exit policy on hand-made exits whose scores can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from distree.errors import PolicyError
from distree.policies import (
    DEFAULT_POLICY,
    ExitInputs,
    create_default_policy,
    create_policy,
    decode_state,
    encode_state,
    list_policies,
    load_policy,
    softmax,
)

# 3 samples, 3 exits, 3 classes; labels 0, 1, 2
LABELS = np.array([0, 1, 2])
LOGITS = np.array(
    [
        [[4.0, 0.0, 0.0], [5.0, 0.0, 0.0], [6.0, 0.0, 0.0]],  # right everywhere, confident, stable
        [[0.0, 0.0, 3.0], [0.0, 3.0, 0.0], [0.0, 4.0, 0.0]],  # wrong at exit 0, right from exit 1
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],  # never right (uniform at the end)
    ],
    dtype=np.float32,
)
FEATS = [np.eye(3, dtype=np.float32) * (i + 1) + 1.0 for i in range(3)]


def probs(i: int) -> np.ndarray:
    return softmax(LOGITS[:, i])


def test_registry_lists_every_policy():
    assert set(list_policies()) >= {
        "last-exit",
        "confidence",
        "entropy",
        "similarity",
        "patience",
        "random",
        "oracle",
        "distree",
        "distree-conf",
    }
    assert "oracle" not in list_policies(deployable_only=True)
    assert create_default_policy(3).name == DEFAULT_POLICY
    with pytest.raises(ValueError, match="unknown policy"):
        create_policy("nope", 3)


def test_confidence_and_entropy_scores():
    s = create_policy("confidence", 3).score_matrix(LOGITS)
    np.testing.assert_allclose(s[:, 0], probs(0).max(axis=1), rtol=1e-6)
    e = create_policy("entropy", 3).score_matrix(LOGITS)
    p = probs(2)[2]  # uniform over 3 classes: normalised entropy 1 -> score 0
    assert np.allclose(p, 1 / 3) and e[2, 2] == pytest.approx(0.0, abs=1e-6)
    assert e[0, 2] > e[0, 0]  # more confident later


def test_distree_first_node_falls_back_to_confidence_then_uses_tv():
    pol = create_policy("distree", 3, measure="tv", first="confidence")
    s = pol.score_matrix(LOGITS)
    np.testing.assert_allclose(s[:, 0], probs(0).max(axis=1), rtol=1e-6)
    tv = 0.5 * np.abs(probs(1) - probs(0)).sum(axis=1)
    np.testing.assert_allclose(s[:, 1], 1.0 - tv, rtol=1e-6)
    # sample 1 flips its prediction between exits 0 and 1: large difference, low score
    assert s[1, 1] < s[0, 1]
    pure = create_policy("distree", 3, first="none").score_matrix(LOGITS)
    assert np.all(pure[:, 0] == -np.inf)


@pytest.mark.parametrize("measure", ["tv", "js", "kl", "feat-w2", "feat-l2", "feat-cos"])
def test_distree_measures_are_zero_difference_for_identical_exits(measure):
    same = np.repeat(LOGITS[:, :1], 3, axis=1)
    feats = [FEATS[0]] * 3
    s = create_policy("distree", 3, measure=measure).score_matrix(same, feats)
    best = 0.0 if measure == "kl" else 1.0
    np.testing.assert_allclose(s[:, 1:], best, atol=1e-6)


def test_distree_feature_measure_needs_features_and_equal_dims():
    pol = create_policy("distree", 3, measure="feat-l2")
    assert pol.needs_features
    with pytest.raises(ValueError, match="needs the exit features"):
        pol.score_matrix(LOGITS, None)
    bad = [FEATS[0], np.ones((3, 5), np.float32), FEATS[2]]
    with pytest.raises(ValueError, match="dimensions"):
        pol.score_matrix(LOGITS, bad)
    msg = "'measure' must be 'tv', 'js', 'kl', 'feat-w2', 'feat-l2' or 'feat-cos', got 'l7'"
    with pytest.raises(PolicyError, match=msg):
        create_policy("distree", 3, measure="l7")


def test_distree_conf_combines_confidence_and_difference():
    pol = create_policy("distree-conf", 3, alpha=0.5, measure="tv")
    s = pol.score_matrix(LOGITS)
    tv = 0.5 * np.abs(probs(1) - probs(0)).sum(axis=1)
    np.testing.assert_allclose(s[:, 1], probs(1).max(axis=1) - 0.5 * tv, rtol=1e-6)
    np.testing.assert_allclose(s[:, 0], probs(0).max(axis=1), rtol=1e-6)


def test_similarity_is_cosine_of_consecutive_softmax():
    s = create_policy("similarity", 3).score_matrix(LOGITS)
    assert np.all(s[:, 0] == -np.inf)
    a, b = probs(1), probs(0)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(s[:, 1], cos, rtol=1e-6)


def test_patience_counts_consecutive_agreement():
    s = create_policy("patience", 3).score_matrix(LOGITS)
    # predictions: s0: 0,0,0   s1: 2,1,1   s2: 0,1,0 (argmax of a tie is 0)
    np.testing.assert_array_equal(s, [[0, 1, 2], [0, 0, 1], [0, 0, 0]])


def test_random_is_seeded_and_exits_with_probability_p():
    a = create_policy("random", 3, seed=7).score_matrix(np.zeros((4000, 3, 2), np.float32))
    b = create_policy("random", 3, seed=7).score_matrix(np.zeros((4000, 3, 2), np.float32))
    c = create_policy("random", 3, seed=8).score_matrix(np.zeros((4000, 3, 2), np.float32))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    from distree.policies.random_policy import RandomPolicy

    th = RandomPolicy.thresholds_for([0.3, 0.5, 1.0])
    assert (a[:, 0] >= th[0]).mean() == pytest.approx(0.3, abs=0.03)


def test_oracle_exits_at_earliest_correct_and_needs_labels():
    pol = create_policy("oracle", 3)
    assert not pol.deployable and pol.needs_labels
    s = pol.score_matrix(LOGITS, labels=LABELS)
    from distree.policies import exit_nodes

    np.testing.assert_array_equal(exit_nodes(s, pol.thresholds), [0, 1, 0])  # hopeless sample 2: node 1
    s_last = create_policy("oracle", 3, hopeless="last").score_matrix(LOGITS, labels=LABELS)
    np.testing.assert_array_equal(exit_nodes(s_last, pol.thresholds), [0, 1, 2])
    with pytest.raises(ValueError, match="labels"):
        pol.score_matrix(LOGITS)


def test_last_exit_never_exits_early():
    s = create_policy("last-exit", 3).score_matrix(LOGITS)
    from distree.policies import exit_nodes

    np.testing.assert_array_equal(exit_nodes(s, create_policy("last-exit", 3).thresholds), [2, 2, 2])


@pytest.mark.parametrize("name", ["confidence", "entropy", "similarity", "patience", "distree", "distree-conf"])
def test_decide_node_by_node_matches_score_matrix(name):
    """A live node (decide with carried, serialised state) exits where offline evaluation says."""
    from distree.policies import exit_nodes

    pol = create_policy(name, 3)
    full = pol.score_matrix(LOGITS, FEATS)
    th = [np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else np.inf for c in full[:, :2].T]
    th = np.append(th, np.inf)
    pol = pol.with_thresholds(th)
    want = exit_nodes(full, pol.thresholds)
    got = np.full(3, -1)
    state: dict = {}
    for i in range(3):
        d = pol.decide(ExitInputs(node=i, logits=LOGITS[:, i], features=FEATS[i], state=state))
        np.testing.assert_allclose(d.scores, full[:, i])
        newly = d.exit & (got < 0)
        got[newly] = i
        state = decode_state(encode_state(d.state))  # travels over the network
        assert len(encode_state(d.state)) < 1024
    np.testing.assert_array_equal(got, want)


def test_decide_qos_rule_forces_exit_when_continuing_misses_deadline():
    pol = create_policy("distree", 3, thresholds=[np.inf, np.inf, np.inf])
    d = pol.decide(ExitInputs(node=0, logits=LOGITS[:, 0], remaining_s=np.array([1.0, 0.01, 1.0]), continue_s=0.05))
    np.testing.assert_array_equal(d.exit, [False, True, False])
    np.testing.assert_array_equal(d.qos, [False, True, False])
    last = pol.decide(ExitInputs(node=2, logits=LOGITS[:, 2], state=d.state))
    assert last.exit.all()


def test_stateful_policy_without_state_says_so():
    with pytest.raises(ValueError, match="state carried from node 0"):
        create_policy("distree", 3).decide(ExitInputs(node=1, logits=LOGITS[:, 1]))


@pytest.mark.parametrize(
    "name",
    ["confidence", "entropy", "similarity", "patience", "random", "oracle", "distree", "distree-conf", "last-exit"],
)
def test_policy_file_round_trip(tmp_path, name):
    pol = create_policy(name, 3)
    pol = pol.with_thresholds([0.25, np.inf, -np.inf])
    pol.calibration = {"validation": {"drop_pp": 0.1}}
    path = pol.save(tmp_path / f"{name}.json")
    back = load_policy(path)
    assert type(back) is type(pol) and back.params == pol.params
    np.testing.assert_array_equal(back.thresholds, pol.thresholds)
    assert back.calibration == pol.calibration


def test_policy_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="distree calibrate"):
        load_policy(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_policy(tmp_path / "bad.json")
