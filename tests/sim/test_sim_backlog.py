"""The deadline rule counts what is already queued on the node's own outgoing link.

A hop whose bandwidth falls so far that one transfer still fits in the deadline but the link cannot
keep up with the arrivals: requests queue on the sending node's link. Counting only the transfer of
the request itself, every request continues and those behind the queue miss their deadline; counting
the backlog, the node answers them itself (exit 1, QoS) and the rest still make it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _simtools import scenario
from test_sim_queueing import bare_trace

from distree.sim import simulate


def _collapse(tmp_path: Path, requests: int = 150):
    # hop 1: 8 Mbit/s, from t = 2 s to t = 22 s only 0.4 Mbit/s (50 kB/s): 25 kB take 0.5 s there,
    # while requests arrive every 0.2 s: the link queue grows by 0.3 s per request
    (tmp_path / "bw.txt").write_text("0 8\n2 0.4\n22 8\n")
    tr = bare_trace(2, flops=10_000, hop_bytes=25_000, n=20)  # 10 ms per node
    return tr, scenario(
        workload={"arrival": "deterministic", "rate_per_s": 5.0, "requests": requests, "deadline_s": 1.0},
        devices={"flops_per_s": 1e6},
        network={"hops": {"bandwidth": {"kind": "trace", "path": str(tmp_path / "bw.txt"), "loop": False}}},
    )


@pytest.mark.parametrize("engine", ["simpy", "vector"])
def test_bandwidth_collapse_exits_early_instead_of_missing_deadlines(engine: str, tmp_path: Path) -> None:
    tr, sc = _collapse(tmp_path)
    r = simulate(sc, tr, "last-exit", engine=engine).records
    arrival = r["arrival_s"]
    during = (arrival > 2.5) & (arrival < 21.0)
    # without the backlog nearly every request of the collapse continues and misses (queue 0.3 s deeper each)
    assert r["deadline_met"].mean() >= 0.99, f"{(~r['deadline_met']).sum()} deadlines missed"
    assert r["qos"][during].mean() > 0.4, "the deadline rule did not fire during the collapse"
    # the link can carry one request per 0.5 s: about 2 of every 5 continue, and each makes its deadline
    went = during & (r["exit_node"] == 2)
    assert 0.25 < went.sum() / during.sum() < 0.55
    assert (r["latency_s"][went] <= 1.0 + 1e-9).all()
    # before and after the collapse nothing exits early
    calm = (arrival < 1.9) | (arrival > 30.0)
    assert (r["exit_node"][calm] == 2).all() and not r["qos"][calm].any()


def test_engines_agree_on_the_backlog(tmp_path: Path) -> None:
    tr, sc = _collapse(tmp_path, requests=120)
    a = simulate(sc, tr, "last-exit", engine="simpy").records
    b = simulate(sc, tr, "last-exit", engine="vector").records
    np.testing.assert_array_equal(a["exit_node"], b["exit_node"])
    np.testing.assert_array_equal(a["qos"], b["qos"])
    np.testing.assert_allclose(a["latency_s"], b["latency_s"], atol=1e-9)
