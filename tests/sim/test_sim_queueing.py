"""Hand-solvable cases: exact latencies, queueing theory, trace-driven links, batching, closed loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _simtools import make_trace, scenario

from distree.models.cost import CostProfile
from distree.policies import create_policy
from distree.sim import simulate
from distree.trace import Trace


def bare_trace(nodes: int, flops: int = 1_000_000, hop_bytes: int = 0, n: int = 10) -> Trace:
    """A trace with no input/output bytes, so only compute (and hops) take time."""
    tr = make_trace(n=n, nodes=nodes)
    tr.cost = CostProfile(
        segment_flops=[flops] * nodes, exit_flops=[0] * nodes, hop_bytes=[hop_bytes] * (nodes - 1),
        input_bytes=0, output_bytes=0,
    )  # fmt: skip
    return tr


@pytest.mark.parametrize("engine", ["simpy", "vector"])
def test_one_node_deterministic_exact(engine: str) -> None:
    tr = bare_trace(1)
    # service 1e6 / 1e6 = 1.0 s; arrivals every 1/0.8 = 1.25 s: no queueing, latency exactly 1.0
    sc = scenario(workload={"arrival": "deterministic", "rate_per_s": 0.8, "requests": 20},
                  devices={"flops_per_s": 1e6})  # fmt: skip
    r = simulate(sc, tr, "last-exit", engine=engine).records
    np.testing.assert_allclose(r["latency_s"], 1.0, rtol=0, atol=1e-12)
    # arrivals every 0.5 s, service 1.0 s: request k waits 0.5 k -> latency 1 + 0.5 k
    sc = scenario(workload={"arrival": "deterministic", "rate_per_s": 2.0, "requests": 20},
                  devices={"flops_per_s": 1e6})  # fmt: skip
    res = simulate(sc, tr, "last-exit", engine=engine)
    np.testing.assert_allclose(res.records["latency_s"], 1.0 + 0.5 * np.arange(20), rtol=0, atol=1e-9)
    agg = res.aggregates()
    assert agg["node_utilisation"][0] == pytest.approx(1.0)
    # time-average number waiting = total wait / makespan = (0.5 * sum k) / 20 s of back-to-back service
    assert agg["node_mean_queue"][0] == pytest.approx(0.5 * 190 / 20.0)


@pytest.mark.parametrize("engine", ["simpy", "vector"])
def test_two_node_chain_with_links_by_hand(engine: str) -> None:
    tr = make_trace(n=10, nodes=2)
    tr.cost = CostProfile(segment_flops=[2_000_000, 1_000_000], exit_flops=[0, 0], hop_bytes=[125_000],
                          input_bytes=250_000, output_bytes=12_500)  # fmt: skip
    sc = scenario(
        workload={"arrival": "deterministic", "rate_per_s": 0.1, "requests": 3},
        devices={"flops_per_s": 1e6},
        network={"uplink": {"bandwidth_mbps": 2.0, "delay_s": 0.01}, "hops": {"bandwidth_mbps": 1.0, "delay_s": 0.1}},
    )
    r = simulate(sc, tr, "last-exit", engine=engine).records
    # uplink 250 kB at 2 Mbit/s = 1 s + 0.01; node1 2 s; hop 125 kB at 1 Mbit/s = 1 s + 0.1; node2 1 s;
    # answer back over the hop (12.5 kB at 1 Mbit/s = 0.1 s + 0.1) and the uplink (0.05 s + 0.01)
    want = 1.01 + 2.0 + 1.1 + 1.0 + 0.2 + 0.06
    np.testing.assert_allclose(r["latency_s"], want, atol=1e-9)
    assert np.all(r["exit_node"] == 2)
    assert np.all(r["bytes"] == 250_000 + 125_000 + 2 * 12_500)


@pytest.mark.parametrize("engine", ["simpy", "vector"])
def test_mm1_mean_wait_matches_theory(engine: str) -> None:
    tr = bare_trace(1)
    lam, mu = 0.5, 1.0  # service mean 1 s (1e6 FLOPs at 1e6 FLOP/s), exponential
    sc = scenario(seed=3, workload={"arrival": "poisson", "rate_per_s": lam, "requests": 40000},
                  devices={"flops_per_s": 1e6, "service": "exponential"})  # fmt: skip
    res = simulate(sc, tr, "last-exit", engine=engine)
    wait = res.aggregates()["node_mean_wait_s"][0]
    rho = lam / mu
    assert wait == pytest.approx(rho / (mu - lam), rel=0.1)  # Wq = rho / (mu - lambda) = 1.0
    assert res.aggregates()["node_utilisation"][0] == pytest.approx(rho, rel=0.05)


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    tr = bare_trace(1)
    lam = 0.7
    sc = scenario(seed=1, workload={"arrival": "poisson", "rate_per_s": lam, "requests": 40000},
                  devices={"flops_per_s": 1e6})  # fmt: skip
    wait = simulate(sc, tr, "last-exit", engine="vector").aggregates()["node_mean_wait_s"][0]
    assert wait == pytest.approx(lam / (2 * (1 - lam)), rel=0.08)  # Wq = rho / (2 mu (1 - rho))


@pytest.mark.parametrize("engine", ["simpy", "vector"])
def test_bandwidth_step_shows_up_where_the_trace_says(engine: str, tmp_path: Path) -> None:
    # hop bandwidth 8 Mbit/s (1 MB/s) until t = 10 s, then 0.8 Mbit/s (100 kB/s)
    (tmp_path / "bw.txt").write_text("0 8\n10 0.8\n")
    tr = bare_trace(2, flops=100_000, hop_bytes=200_000)  # 0.1 s per node at 1 MFLOP/s
    sc = scenario(
        workload={"arrival": "deterministic", "rate_per_s": 1.0, "requests": 14},
        devices={"flops_per_s": 1e6},
        network={"hops": {"bandwidth": {"kind": "trace", "path": str(tmp_path / "bw.txt"), "loop": False}}},
    )
    lat = simulate(sc, tr, "last-exit", engine=engine).records["latency_s"]
    # request k leaves node 1 at k + 0.1: transfer 0.2 s before the step, 2 s after it;
    # request 9 starts at 9.1 -> 0.2 s, arrives 9.3; request 10 starts at 10.1 -> 2.0 s
    sent = np.arange(14) + 0.1
    xfer = np.where(sent + 0.2 <= 10.0, 0.2, 2.0)
    # from request 10 on the link (2 s per message, one arrival per second) queues: FIFO recursion
    fin = np.empty(14)
    free = 0.0
    for k in range(14):
        start = max(sent[k], free)
        d = 0.2 if start + 0.2 <= 10.0 else (2.0 if start >= 10.0 else (10.0 - start) + (0.2 - (10.0 - start)) * 10)
        fin[k] = start + d
        free = fin[k]
    assert xfer[9] == 0.2 and xfer[10] == 2.0
    np.testing.assert_allclose(lat, fin + 0.1 - np.arange(14), atol=1e-9)
    assert lat[9] == pytest.approx(0.4) and lat[10] == pytest.approx(2.2)


def test_batching_by_hand() -> None:
    tr = bare_trace(1)
    # four requests in 0.04 s; batch up to 4, wait up to 0.1 s: one batch of 4 costs 1 + 0.5 * 3 = 2.5 s
    sc = scenario(
        workload={"arrival": "deterministic", "rate_per_s": 100.0, "requests": 4},
        devices={"flops_per_s": 1e6, "max_batch": 4, "max_delay_s": 0.1, "batch_marginal": 0.5},
    )
    res = simulate(sc, tr, "last-exit")
    assert res.engine == "simpy"
    np.testing.assert_allclose(res.records["answered_s"], 0.03 + 2.5, atol=1e-9)
    assert res.aggregates()["node_mean_batch"] == [4.0]
    # with a shorter wait the first batch leaves at 0.015 with two requests
    sc.device_default.max_delay_s = 0.015
    res = simulate(sc, tr, "last-exit")
    ans = res.records["answered_s"]
    np.testing.assert_allclose(ans[:2], 0.015 + 1.5, atol=1e-9)
    np.testing.assert_allclose(ans[2:], 0.015 + 1.5 + 1.5, atol=1e-9)


def test_closed_loop_by_hand() -> None:
    tr = bare_trace(2)
    sc = scenario(workload={"arrival": "closed", "clients": 1, "requests": 5}, devices={"flops_per_s": 1e6})
    res = simulate(sc, tr, "last-exit")
    np.testing.assert_allclose(res.records["latency_s"], 2.0, atol=1e-9)
    np.testing.assert_allclose(res.records["arrival_s"], 2.0 * np.arange(5), atol=1e-9)
    # two clients share the chain: pipelined, each request still 2 s end to end after the first
    sc = scenario(workload={"arrival": "closed", "clients": 2, "requests": 6}, devices={"flops_per_s": 1e6})
    agg = simulate(sc, tr, "last-exit").aggregates()
    assert agg["throughput_per_s"] == pytest.approx(6 / 7.0)


def test_speed_change_mid_task_stretches_the_rest(tmp_path: Path) -> None:
    (tmp_path / "speed.txt").write_text("0 1.0\n0.5 0.25\n")
    tr = bare_trace(1)
    sc = scenario(workload={"arrival": "deterministic", "rate_per_s": 0.1, "requests": 1},
                  devices={"flops_per_s": 1e6, "speed": {"kind": "trace", "path": str(tmp_path / "speed.txt"),
                                                         "loop": False}})  # fmt: skip
    for engine in ("simpy", "vector"):
        lat = simulate(sc, tr, "last-exit", engine=engine).records["latency_s"]
        # 0.5 s of work at full speed, the other 0.5 s at quarter speed: 0.5 + 2.0
        assert lat[0] == pytest.approx(2.5)


@pytest.mark.parametrize("engine", ["simpy", "vector"])
def test_deadline_forces_earlier_exits_and_is_met(engine: str) -> None:
    tr = bare_trace(4, flops=10_000)  # 10 ms per node
    base = {"arrival": "deterministic", "rate_per_s": 10.0, "requests": 50}
    no_dl = simulate(scenario(workload=base, devices={"flops_per_s": 1e6}), tr, "last-exit", engine=engine)
    assert np.all(no_dl.records["exit_node"] == 4)
    tight = scenario(workload={**base, "deadline_s": 0.025}, devices={"flops_per_s": 1e6})
    res = simulate(tight, tr, "last-exit", engine=engine)
    r = res.records
    # 2 nodes fit in 25 ms; continuing to a third would not
    assert np.all(r["exit_node"] == 2)
    assert np.all(r["qos"]) and r["deadline_met"].all()
    assert res.aggregates()["compute_saved"] == pytest.approx(0.5)


def test_policy_object_is_the_runtime_one() -> None:
    tr = make_trace(n=300, nodes=4)
    pol = create_policy("confidence", 4, [0.9, 0.9, 0.9, 0.0])
    sc = scenario(workload={"arrival": "poisson", "rate_per_s": 5.0, "requests": 300, "samples": "cycle"},
                  devices={"flops_per_s": 1e9})  # fmt: skip
    r = simulate(sc, tr, pol).records
    # without deadline pressure the exits are exactly those of offline evaluation of the same trace
    scores = pol.score_matrix(tr.logits, tr.features)
    hit = scores >= pol.thresholds
    hit[:, -1] = True
    np.testing.assert_array_equal(r["exit_node"], hit.argmax(axis=1) + 1)
    np.testing.assert_array_equal(r["correct"], tr.correct[np.arange(300), hit.argmax(axis=1)])
