"""Scenario files and device profiles: every mistake is one line naming the file, table, key and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distree.errors import ProfileError, ScenarioError
from distree.sim import load_device_profile, load_scenario

GOOD = """
[workload]
arrival = "poisson"
rate_per_s = 40
requests = 1e3

[devices]
flops_per_s = 2e9

[[devices.nodes]]
node = 2
seconds = 0.01

[network.hops]
bandwidth_mbps = 100
delay_s = 0.001
"""


def _error(tmp_path: Path, text: str) -> str:
    f = tmp_path / "scenario.toml"
    f.write_text(text)
    with pytest.raises(ScenarioError) as ei:
        load_scenario(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}: ") and "\n" not in msg, msg
    return msg[len(f"{f}: ") :]


def test_good_scenario_file(tmp_path):
    f = tmp_path / "good.toml"
    f.write_text(GOOD)
    sc = load_scenario(f)
    assert sc.name == "good" and sc.workload.requests == 1000 and isinstance(sc.workload.requests, int)
    assert sc.device_default.flops_per_s == 2e9 and sc.device_nodes == {1: {"seconds": 0.01}}
    assert sc.hop_default.bandwidth == 100.0 and sc.hop_default.delay_s == 0.001


def test_bad_scenario_files(tmp_path):
    unknown = _error(tmp_path, GOOD.replace("rate_per_s = 40", "rate_per_s = 40\nfoo = 1"))
    assert unknown.startswith("[workload] unknown key 'foo' (allowed: arrival, clients, deadline_jitter_s,")
    assert _error(tmp_path, GOOD.replace("rate_per_s = 40", 'rate_per_s = "40"')) == (
        "[workload] 'rate_per_s' must be a number, got '40'"
    )
    assert _error(tmp_path, GOOD.replace("rate_per_s = 40", "rate_per_s = -4")) == (
        "[workload] 'rate_per_s' must be > 0, got -4"
    )
    assert _error(tmp_path, GOOD.replace("node = 2\n", "")) == (
        "[[devices.nodes]] #1 missing key 'node' (node = <1-based node number>; see docs/simulator.md for the "
        "scenario keys)"
    )
    assert _error(tmp_path, GOOD.replace("rate_per_s = 40\n", "")) == (
        "[workload] arrival = 'poisson' needs rate_per_s (requests per second)"
    )
    assert _error(tmp_path, GOOD.replace("delay_s = 0.001", "delay_s = 0.001\nbandwith_mbps = 3")).startswith(
        "[network.hops] unknown key 'bandwith_mbps' (allowed: bandwidth, bandwidth_mbps, delay_s; did you mean "
        "'bandwidth_mbps'?)"
    )
    assert _error(tmp_path, GOOD.replace("seconds = 0.01", "seconds = 0.01\nflops_per_s = 1e9")) == (
        "[[devices.nodes]] #1 give either flops_per_s or seconds, not both"
    )
    assert _error(tmp_path, GOOD.replace("[network.hops]", '[network]\nreturn = "back"\n[network.hops]')) == (
        "[network] 'return' must be 'chain' or 'direct', got 'back'"
    )
    assert _error(tmp_path, 'engine = "fast"\n' + GOOD) == "'engine' must be 'auto', 'simpy' or 'vector', got 'fast'"
    assert _error(tmp_path, "workload = 3\n") == "'workload' must be a table, got 3"


def _profile(**over) -> dict:
    p = {"format": "distree-device-profile/1", "checkpoint": "runs/x", "model": "small-cnn", "model_args": {},
         "num_nodes": 2, "segment_flops": [1000, 2000], "exit_flops": [10, 10], "segment_s": [0.001, 0.002],
         "exit_s": [0.0001, 0.0001], "node_s": [0.0011, 0.0021], "flops_per_s": [9.2e5, 9.6e5],
         "batch_sizes": [1, 8], "batch_node_s": {"1": [0.0011, 0.0021], "8": [0.004, 0.008]},
         "batch_marginal": [0.3, 0.3], "repeats": 30, "warmup": 5,
         "host": {"node": "h", "machine": "x86_64", "processor": "", "python": "3.11", "torch": "2",
                  "torch_threads": 1}}  # fmt: skip
    p.update(over)
    return p


def _profile_error(tmp_path: Path, data: dict) -> str:
    f = tmp_path / "device.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ProfileError) as ei:
        load_device_profile(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}: ") and "\n" not in msg, msg
    return msg[len(f"{f}: ") :]


def test_device_profile_from_the_old_writer_loads(tmp_path):
    f = tmp_path / "device.json"
    f.write_text(json.dumps(_profile()))  # no format_version: written before it existed
    p = load_device_profile(f)
    assert p["format_version"] == 1 and p["node_s"] == [0.0011, 0.0021] and p["_path"] == str(f)


def test_bad_device_profiles(tmp_path):
    assert _profile_error(tmp_path, _profile(gpu=True)).startswith(
        "unknown key 'gpu' (allowed: backend, batch_marginal,"
    )
    assert _profile_error(tmp_path, _profile(node_s="fast")) == "'node_s' must be a list, got 'fast'"
    assert _profile_error(tmp_path, _profile(num_nodes=0)) == "'num_nodes' must be >= 1, got 0"
    assert _profile_error(tmp_path, _profile(flops_per_s=[1.0, -1.0])) == "'flops_per_s' must be > 0 for every node"
    assert _profile_error(tmp_path, _profile(node_s=[0.1])) == (
        "'node_s' has 1 entries but 'segment_flops' has 2: one entry per node"
    )
    no_node_s = {k: v for k, v in _profile().items() if k != "node_s"}
    assert _profile_error(tmp_path, no_node_s) == (
        "missing key 'node_s' (median seconds per node (segment + exit) at batch 1; "
        "re-create it with `distree profile-device --checkpoint C --out P.json`)"
    )
    assert _profile_error(tmp_path, _profile(host={"cpu": "x"})).startswith("[host] unknown key 'cpu' (allowed:")
    assert _profile_error(tmp_path, _profile(format="distree-policy/1")) == (
        "'format' must be 'distree-device-profile/1', got 'distree-policy/1'"
    )


def test_a_scenario_names_its_bad_profile(tmp_path):
    (tmp_path / "device.json").write_text(json.dumps(_profile(node_s=[0.1])))
    f = tmp_path / "s.toml"
    f.write_text('[workload]\narrival = "poisson"\nrate_per_s = 5\n[devices]\nprofile = "device.json"\n')
    with pytest.raises(ProfileError) as ei:
        load_scenario(f)
    assert str(ei.value) == (
        f"{f}: [devices] 'profile' = 'device.json': {tmp_path / 'device.json'}: 'node_s' has 1 entries but "
        "'segment_flops' has 2: one entry per node"
    )
