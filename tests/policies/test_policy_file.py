"""Policy files and policy parameters: every mistake is one line naming the file, key and fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distree.errors import PolicyError
from distree.policies import create_default_policy, create_policy, list_policies, load_policy
from distree.policies.registry import policy_params


def _good(tmp_path: Path) -> dict:
    pol = create_policy("distree-conf", 3, [0.5, np.inf, -np.inf])
    return json.loads(pol.save(tmp_path / "p.json").read_text())


def _error(tmp_path: Path, data: object) -> str:
    f = tmp_path / "policy.json"
    f.write_text(json.dumps(data))
    with pytest.raises(PolicyError) as ei:
        load_policy(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}: ") and "\n" not in msg, msg
    return msg[len(f"{f}: ") :]


def test_bad_policy_files(tmp_path):
    good = _good(tmp_path)
    without = {k: v for k, v in good.items() if k != "thresholds"}
    assert _error(tmp_path, without) == (
        "missing key 'thresholds' (one threshold per node, null for +-inf; "
        "re-run `distree calibrate` to write a complete policy file)"
    )
    assert _error(tmp_path, {**good, "treshold": 1}).startswith(
        "unknown key 'treshold' (allowed: calibration, deployable, format, format_version, num_nodes, params, policy, "
        "thresholds, thresholds_inf; did you mean 'thresholds'?)"
    )
    assert _error(tmp_path, {**good, "num_nodes": "3"}) == "'num_nodes' must be an integer, got '3'"
    assert _error(tmp_path, {**good, "num_nodes": 0}) == "'num_nodes' must be >= 1, got 0"
    assert _error(tmp_path, {**good, "thresholds": [0.5, "high", None]}) == (
        "'thresholds[1]' must be a number, got 'high'"
    )
    assert _error(tmp_path, {**good, "thresholds": [0.5]}) == (
        "'thresholds' has 1 entries but num_nodes is 3: one threshold per node"
    )
    assert _error(tmp_path, {**good, "thresholds_inf": [None, "+inf", None]}) == (
        "'thresholds_inf[1]' must be 'inf' or '-inf', got '+inf'"
    )
    assert _error(tmp_path, {**good, "policy": "distree-cnof"}).startswith(
        "'policy' must be a registered policy, got 'distree-cnof' (available: confidence,"
    )
    assert _error(tmp_path, {**good, "format": "distree-trace/1"}) == (
        "'format' must be 'distree-policy/1', got 'distree-trace/1'"
    )
    assert _error(tmp_path, {**good, "format_version": 2}).startswith(
        "'format_version' is 2, newer than this distree reads (1)"
    )
    assert _error(tmp_path, [1, 2]) == "a policy file must be a JSON object, got list"


def test_bad_parameters_in_a_policy_file(tmp_path):
    good = _good(tmp_path)
    assert _error(tmp_path, {**good, "params": {"alpah": 0.5}}) == (
        "[params] unknown parameter 'alpah' (allowed: alpha, first, measure; did you mean 'alpha'?)"
    )
    assert _error(tmp_path, {**good, "params": {"alpha": "half"}}) == "[params] 'alpha' must be a number, got 'half'"
    assert _error(tmp_path, {**good, "params": {"alpha": -1}}) == "[params] 'alpha' must be >= 0, got -1"
    assert _error(tmp_path, {**good, "params": {"measure": "l2"}}) == (
        "[params] 'measure' must be 'tv', 'js', 'kl', 'feat-w2', 'feat-l2' or 'feat-cos', got 'l2'"
    )
    entropy = {**good, "policy": "entropy", "params": {"alpha": 1}}
    assert _error(tmp_path, entropy) == "[params] unknown parameter 'alpha' (it takes none; remove it)"


def test_policy_file_from_the_old_writer_loads(tmp_path):
    """Files written before format_version existed (no such key) are version 1."""
    old = {
        "format": "distree-policy/1",
        "policy": "distree-conf",
        "num_nodes": 4,
        "deployable": True,
        "thresholds": [0.937, 0.333, 0.108, None],
        "thresholds_inf": [None, None, None, "-inf"],
        "params": {"alpha": 0.5, "measure": "feat-l2", "first": "confidence"},
        "calibration": {"method": "lagrangian", "seconds": 0.2},
    }
    f = tmp_path / "old.json"
    f.write_text(json.dumps(old))
    p = load_policy(f)
    assert p.name == "distree-conf" and p.params == old["params"] and p.calibration == old["calibration"]
    np.testing.assert_array_equal(p.thresholds, [0.937, 0.333, 0.108, -np.inf])
    assert json.loads(p.save(tmp_path / "new.json").read_text())["format_version"] == 1


def test_misspelt_parameters_are_errors_listing_the_valid_ones():
    with pytest.raises(PolicyError) as ei:
        create_policy("distree", 3, mesure="tv")
    assert (
        str(ei.value)
        == "policy 'distree': unknown parameter 'mesure' (allowed: first, measure; did you mean 'measure'?)"
    )
    with pytest.raises(PolicyError, match="policy 'distree-conf': unknown parameter 'alpah'.*did you mean 'alpha'"):
        create_default_policy(3, alpah=0.5)
    with pytest.raises(PolicyError, match="policy 'random': 'seed' must be an integer, got 'x'"):
        create_policy("random", 3, seed="x")
    with pytest.raises(PolicyError, match="unknown policy 'distre' .*did you mean 'distree'"):
        create_policy("distre", 3)
    # direct construction is checked too (the constructor is the declaration)
    from distree.policies.entropy import EntropyPolicy

    with pytest.raises(PolicyError, match="policy 'entropy': unknown parameter 'measure'"):
        EntropyPolicy(3, measure="tv")


def test_allowed_parameters_come_from_the_constructors():
    assert policy_params("distree") == {"measure": "tv", "first": "confidence"}
    assert policy_params("distree-conf") == {"alpha": 0.5, "measure": "feat-w2", "first": "confidence"}
    assert policy_params("similarity") == {"on": "probs"}
    assert policy_params("random") == {"seed": 0}
    assert policy_params("oracle") == {"hopeless": "first"}
    for name in ("confidence", "entropy", "patience", "last-exit"):
        assert policy_params(name) == {}
    for name in list_policies():
        assert create_policy(name, 2).params == policy_params(name)
    p = create_policy("distree-conf", 2, alpha=1)
    assert p.params["alpha"] == 1.0 and isinstance(p.params["alpha"], float)
