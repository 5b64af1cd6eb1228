"""Both engines give the same per-request results; failures; scenario validation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from _simtools import make_trace, scenario

from distree.policies import create_policy, list_policies
from distree.sim import ScenarioError, choose_engine, load_scenario, parse_scenario, simulate

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "traces"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"

SHARED = {
    "steady": dict(
        workload={"arrival": "poisson", "rate_per_s": 200, "requests": 1500, "deadline_s": 0.03},
        devices={"flops_per_s": 5e8},
        network={"hops": {"bandwidth_mbps": 50, "delay_s": 0.001}},
    ),
    "fluctuating": dict(
        workload={"arrival": "onoff", "rate_on_per_s": 500, "mean_on_s": 0.5, "mean_off_s": 0.5, "requests": 1500,
                  "deadline_s": 0.04, "deadline_jitter_s": 0.01},
        devices={"flops_per_s": 5e8, "speed": {"kind": "markov", "factors": [1.0, 0.3], "mean_holding_s": [0.4, 0.2]},
                 "service": "lognormal", "service_cv": 0.2},
        network={"uplink": {"bandwidth_mbps": 20, "delay_s": 0.002},
                 "hops": {"bandwidth": {"kind": "trace", "path": str(FIX / "norway_bus_1"), "scale": 4.0},
                          "delay_s": 0.003},
                 "hop": [{"hop": 2, "bandwidth": {"kind": "trace", "path": str(FIX / "norway_train_5"),
                                                  "offset_s": 7.0}}]},
        ),
    "direct-return": dict(
        workload={"arrival": "deterministic", "rate_per_s": 300, "requests": 800, "deadline_s": 0.02},
        devices={"flops_per_s": 4e8, "nodes": [{"node": 3, "flops_per_s": 1e8}]},
        network={"return": "direct", "hops": {"bandwidth_mbps": 30}},
    ),
}  # fmt: skip

POLICIES = [p for p in ("last-exit", "confidence", "entropy", "patience", "similarity", "distree")
            if p in list_policies()]  # fmt: skip


def _policy(name: str, trace):
    if name == "last-exit":
        return create_policy(name, trace.num_nodes)
    # thresholds at the 40th percentile of each node's scores: a mix of exits
    p = create_policy(name, trace.num_nodes)
    s = p.score_matrix(trace.logits, trace.features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a node without scores (e.g. the first for similarity)
        th = np.nanpercentile(np.where(np.isfinite(s), s, np.nan), 60, axis=0)
    return p.with_thresholds(np.nan_to_num(th, nan=np.inf))


@pytest.mark.parametrize("case", sorted(SHARED))
@pytest.mark.parametrize("policy", POLICIES)
def test_engines_agree_per_request(case: str, policy: str) -> None:
    tr = make_trace(n=400, nodes=4, seed=1)
    sc = scenario(seed=7, **SHARED[case])
    assert choose_engine(sc, tr) == "vector"
    pol = _policy(policy, tr)
    v = simulate(sc, tr, pol, engine="vector").records
    s = simulate(sc, tr, pol, engine="simpy").records
    np.testing.assert_array_equal(v["exit_node"], s["exit_node"])
    np.testing.assert_array_equal(v["qos"], s["qos"])
    np.testing.assert_array_equal(v["correct"], s["correct"])
    np.testing.assert_allclose(v["latency_s"], s["latency_s"], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(v["deadline_met"], s["deadline_met"])
    if policy == "confidence":
        assert len(np.unique(v["exit_node"])) > 1


def test_failures_degrade_but_lose_nothing_computed() -> None:
    tr = make_trace(n=200, nodes=4)
    sc = scenario(
        seed=2,
        workload={"arrival": "poisson", "rate_per_s": 100, "requests": 3000},
        devices={"flops_per_s": 5e8, "nodes": [{"node": 3, "mttf_s": 3.0, "mttr_s": 1.0}]},
    )
    assert choose_engine(sc, tr) == "simpy"
    with pytest.raises(ScenarioError, match="failures at node 3"):
        choose_engine(sc, tr, "vector")
    res = simulate(sc, tr, "last-exit")
    r = res.records
    agg = res.aggregates()
    assert agg["lost"] == 0 and agg["answered"] == 3000
    deg = r["degraded"]
    assert 0 < deg.sum() < 3000
    # degraded answers come from node 2 (the node before the failed one); the rest from the last node
    assert set(np.unique(r["exit_node"][deg])) == {2}
    assert np.all(r["exit_node"][~deg] == 4)
    assert 0.05 < agg["node_down_fraction"][2] < 0.6


def test_first_node_failure_loses_requests() -> None:
    tr = make_trace(n=50, nodes=2)
    sc = scenario(seed=1, workload={"arrival": "poisson", "rate_per_s": 50, "requests": 2000},
                  devices={"flops_per_s": 1e9, "nodes": [{"node": 1, "mttf_s": 5.0, "mttr_s": 2.0}]})  # fmt: skip
    agg = simulate(sc, tr, "last-exit").aggregates()
    assert agg["lost"] > 0 and agg["answered"] + agg["lost"] == 2000
    assert agg["accuracy"] <= 1 - agg["lost"] / 2000 + 1e-12


def test_scenario_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"\[workload\] unknown key 'rate' \(allowed: .*did you mean 'rate_per_s'"):
        parse_scenario({"workload": {"rate": 3}})
    with pytest.raises(ScenarioError, match="needs rate_per_s"):
        parse_scenario({"workload": {"arrival": "poisson"}})
    with pytest.raises(ScenarioError, match="'arrival' must be 'poisson', 'deterministic', 'onoff' or 'closed'"):
        parse_scenario({"workload": {"arrival": "bursty"}})
    with pytest.raises(ScenarioError, match="'rate_per_s' must be a number, got 'fast'"):
        parse_scenario({"workload": {"arrival": "poisson", "rate_per_s": "fast"}})
    w = {"arrival": "poisson", "rate_per_s": 1}
    with pytest.raises(ScenarioError, match=r"\[\[devices.nodes\]\] #1 missing key 'node'"):
        parse_scenario({"workload": w, "devices": {"nodes": [{"flops_per_s": 1e9}]}})
    with pytest.raises(ScenarioError, match=r"no bandwidth \(Mbit/s\) trace file"):
        parse_scenario({"workload": w, "network": {"hops": {"bandwidth": {"kind": "trace", "path": "nowhere.txt"}}}})
    with pytest.raises(ScenarioError, match="'speed' is not a valid speed profile: markov speed"):
        parse_scenario({"workload": w, "devices": {"speed": {"kind": "markov", "factors": [1.0]}}})
    with pytest.raises(ScenarioError, match="says nothing about compute speed"):
        simulate(parse_scenario({"workload": {"arrival": "poisson", "rate_per_s": 1}}), make_trace(), "last-exit")
    sc = parse_scenario({"workload": {"arrival": "poisson", "rate_per_s": 1},
                         "devices": {"flops_per_s": 1e9, "nodes": [{"node": 9, "seconds": 1}]}})  # fmt: skip
    with pytest.raises(ScenarioError, match="only 4 nodes"):
        simulate(sc, make_trace(), "last-exit")
    bad = tmp_path / "bad.toml"
    bad.write_text("[workload\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="no scenario file"):
        load_scenario(tmp_path / "missing.toml")


def test_example_scenarios_load_and_run() -> None:
    files = sorted(EXAMPLES.glob("*.toml"))
    assert len(files) >= 2
    tr = make_trace(n=100, nodes=4)
    for f in files:
        sc = load_scenario(f)
        sc.workload.requests = 300
        if sc.profile is not None:
            continue  # measured on a real checkpoint; covered by the profile test
        agg = simulate(sc, tr, "last-exit").aggregates()
        assert agg["answered"] + agg["lost"] == 300
