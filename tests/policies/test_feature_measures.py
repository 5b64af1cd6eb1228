"""The width-independent feature difference (``feat-w2``) of the default policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distree.policies import DEFAULT_POLICY, ExitInputs, create_default_policy, create_policy
from distree.policies import _measures as m

RNG = np.random.default_rng(7)


def _relu(*shape: int) -> np.ndarray:
    return np.maximum(RNG.normal(size=shape), 0).astype(np.float32) * RNG.uniform(0.5, 2.0, size=(shape[0], 1))


def test_equal_widths_give_the_relative_l2_of_the_sorted_vectors():
    a, b = _relu(50, 32), _relu(50, 32)
    d = m.quantile_w2(m.sort_rows(a), m.sort_rows(b))
    np.testing.assert_allclose(d, m.rel_l2(np.sort(a, axis=1), np.sort(b, axis=1)), rtol=1e-6)
    # the best matching of units: never more than the coordinate-wise difference
    assert (d <= m.rel_l2(a, b) + 1e-9).all()


def test_blind_to_the_order_of_a_heads_units():
    a, b = _relu(20, 16), _relu(20, 16)
    perm = RNG.permutation(16)
    np.testing.assert_allclose(
        m.quantile_w2(m.sort_rows(a[:, perm]), m.sort_rows(b)), m.quantile_w2(m.sort_rows(a), m.sort_rows(b))
    )


@pytest.mark.parametrize("fa,fb", [(128, 64), (12, 18), (7, 5), (1, 9), (640, 128)])
def test_unequal_widths_match_the_exact_distance_on_a_common_grid(fa, fb):
    """Repeating each entry L/F times (L = lcm) keeps the distribution; there the widths are equal."""
    a, b = _relu(10, fa), _relu(10, fb)
    lcm = math.lcm(fa, fb)
    ea, eb = np.repeat(np.sort(a, axis=1), lcm // fa, axis=1), np.repeat(np.sort(b, axis=1), lcm // fb, axis=1)
    np.testing.assert_allclose(m.quantile_w2(m.sort_rows(a), m.sort_rows(b)), m.rel_l2(ea, eb), rtol=1e-6)


def test_bounded_scale_free_and_zero_for_the_same_distribution():
    a, b = _relu(30, 24), _relu(30, 40)
    d = m.quantile_w2(m.sort_rows(a), m.sort_rows(b))
    assert ((d >= 0) & (d <= 1 + 1e-12)).all() and (d > 0).all()
    np.testing.assert_allclose(m.quantile_w2(m.sort_rows(3 * a), m.sort_rows(3 * b)), d, rtol=1e-6)
    same = m.quantile_w2(m.sort_rows(a), m.sort_rows(np.repeat(a, 2, axis=1)))  # width 48, same entries
    np.testing.assert_allclose(same, 0.0, atol=1e-7)
    zero = np.zeros((2, 8), np.float32)
    np.testing.assert_array_equal(m.quantile_w2(zero, zero), [0.0, 0.0])
    # opposite extremes: all mass at 0 vs all at c gives the bound 1
    np.testing.assert_allclose(m.quantile_w2(zero, np.ones((2, 3), np.float32)), 1.0)


def test_default_policy_runs_on_unequal_widths_and_live_matches_offline():
    assert create_default_policy(3).params["measure"] == "feat-w2" and DEFAULT_POLICY == "distree-conf"
    n, k = 40, 5
    logits = RNG.normal(size=(n, 3, k)).astype(np.float32) * 3
    feats = [_relu(n, 128), _relu(n, 32), _relu(n, 64)]
    pol = create_default_policy(3, [0.6, 0.5, 0.0])
    s = pol.score_matrix(logits, feats)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    d = m.quantile_w2(m.sort_rows(feats[1]), m.sort_rows(feats[0]))
    np.testing.assert_allclose(s[:, 1], p[:, 1].max(-1) - 0.5 * d, rtol=1e-5)
    # a live node sees one request at a time and carries the state: same scores, state of F floats
    state: dict = {}
    for node in range(3):
        dec = pol.decide(ExitInputs(node=node, logits=logits[:1, node], features=feats[node][:1], state=state))
        np.testing.assert_allclose(dec.scores, s[:1, node], rtol=1e-5)
        state = dec.state
        assert state["prev"].shape == (1, feats[node].shape[1])


def test_coordinate_measures_still_refuse_unequal_widths_and_name_the_alternative():
    logits = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError, match="use measure 'feat-w2'"):
        create_policy("distree", 2, measure="feat-l2").score_matrix(logits, [_relu(4, 8), _relu(4, 6)])
    s = create_policy("distree", 2, measure="feat-w2").score_matrix(logits, [_relu(4, 8), _relu(4, 6)])
    assert np.isfinite(s).all()
