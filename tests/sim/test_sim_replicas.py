"""Replicas per tier in the simulator: round robin over the up replicas, failover, and the replica sweep
that sizes a fleet ("how many replicas of tier 2 for R req/s at p99 <= L ms")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _simtools import make_trace, scenario
from typer.testing import CliRunner

from distree.cli import app
from distree.policies import create_policy
from distree.sim import ScenarioError, choose_engine, simulate, smallest_meeting, sweep

LAST = create_policy("last-exit", 4)


def _sc(rate: float, tier2: dict | None = None, **dev):
    return scenario(
        workload={"arrival": "poisson", "rate_per_s": rate, "requests": 1500},
        devices={"seconds": 0.002, **dev, "nodes": [{"node": 2, "seconds": 0.010, **(tier2 or {})}]},
        network={"hops": {"bandwidth_mbps": 1000, "delay_s": 0.0005}},
    )


def test_one_replica_is_the_chain_as_before_and_replicas_use_the_event_engine():
    tr = make_trace(n=100)
    base, one = _sc(60), _sc(60, {"replicas": 1})
    a, b = simulate(base, tr, LAST, engine="simpy"), simulate(one, tr, LAST, engine="simpy")
    np.testing.assert_array_equal(a.records["latency_s"], b.records["latency_s"])
    assert choose_engine(one, tr) == "vector" and choose_engine(_sc(60, {"replicas": 2}), tr) == "simpy"
    with pytest.raises(ScenarioError, match="engine 'vector' cannot simulate replicas at node 2"):
        simulate(_sc(60, {"replicas": 2}), tr, LAST, engine="vector")


def test_replicas_of_the_bottleneck_raise_throughput_and_cut_the_tail():
    tr = make_trace(n=100)
    # tier 2 takes 10 ms: one replica cannot keep up with 150 req/s, two are 75% busy, three 50%
    rows = sweep(_sc(150), tr, [LAST], "replicas:2", [1, 2, 3])
    by = {r["value"]: r for r in rows}
    assert by[1]["node_utilisation"][1] > 0.95 and 0.6 < by[2]["node_utilisation"][1] < 0.9
    assert by[2]["throughput_per_s"] > 1.3 * by[1]["throughput_per_s"]
    assert by[3]["latency_p99_s"] < by[2]["latency_p99_s"] < by[1]["latency_p99_s"]
    assert all(r["answered"] == 1500 and r["degraded_rate"] == 0 for r in rows)
    best = smallest_meeting(rows, by[2]["latency_p99_s"] * 1.01)
    assert best is not None and best["value"] == 2
    assert smallest_meeting(rows, 1e-6) is None


def test_a_failing_replica_fails_over_instead_of_degrading():
    tr = make_trace(n=100)
    fail = {"mttf_s": 2.0, "mttr_s": 0.5}
    one = simulate(_sc(40, fail), tr, LAST)
    two = simulate(_sc(40, {**fail, "replicas": 2}), tr, LAST)
    assert one.aggregates()["degraded_rate"] > 0.05
    # degraded only while both replicas are down at once (each is down ~20% of the time)
    assert two.aggregates()["degraded_rate"] < 0.5 * one.aggregates()["degraded_rate"]


def test_replica_sweep_from_the_cli(tmp_path: Path):
    tpath = make_trace(n=100).save(tmp_path / "t.trace.safetensors")
    spath = tmp_path / "s.toml"
    spath.write_text(
        '[workload]\narrival = "poisson"\nrate_per_s = 50\nrequests = 800\n'
        "[devices]\nseconds = 0.002\n[[devices.nodes]]\nnode = 2\nseconds = 0.010\n"
    )
    args = ["simulate", "--scenario", str(spath), "--trace", str(tpath), "--policy", "last-exit", "--out",
            str(tmp_path / "o")]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--rate", "250", "--sweep", "replicas:2=1,2,3,4", "--p99-ms", "40"])
    assert res.exit_code == 0, res.output
    assert "tier 2 needs 3 replicas for 250 req/s at p99 <= 40 ms" in " ".join(res.output.split()), res.output
    assert (tmp_path / "o" / "s.sweep-replicas2.json").is_file()
    res = CliRunner().invoke(app, [*args, "--sweep", "replicas=1,2"])
    assert res.exit_code == 2 and "give the tier" in res.output
