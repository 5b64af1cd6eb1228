"""CLI smoke tests: simulate (with a sweep), sweep, profile-device feeding a scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _simtools import make_trace
from typer.testing import CliRunner

from distree.cli import app
from distree.policies import create_policy

runner = CliRunner()

SCENARIO = """
name = "smoke"
[workload]
arrival = "poisson"
rate_per_s = 50
requests = 400
deadline_s = 0.05
[devices]
flops_per_s = 2e8
speed = { kind = "markov", factors = [1.0, 0.5], mean_holding_s = [1.0, 0.5] }
[network.hops]
bandwidth_mbps = 20
delay_s = 0.001
"""


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    tr = make_trace(n=100, nodes=4)
    tpath = tr.save(tmp_path / "t.trace.safetensors")
    spath = tmp_path / "s.toml"
    spath.write_text(SCENARIO)
    pdir = tmp_path / "policies"
    create_policy("confidence", 4, [0.7, 0.7, 0.7, 0.0]).save(pdir / "confidence.json")
    return {"trace": tpath, "scenario": spath, "policies": pdir, "out": tmp_path / "out"}


def test_simulate_and_sweep(files: dict[str, Path]) -> None:
    res = runner.invoke(app, ["simulate", "--scenario", str(files["scenario"]), "--trace", str(files["trace"]),
                              "--policy", f"last-exit,{files['policies']}", "--out", str(files["out"]),
                              "--sweep", "load=0.5,1.5", "--sweep", "fluctuation=0,1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = files["out"]
    rows = json.loads((out / "smoke.json").read_text())
    assert [r["policy"] for r in rows] == ["last-exit", "confidence"]
    assert rows[1]["compute_saved"] > rows[0]["compute_saved"]
    for name in ("smoke.md", "smoke.png", "smoke.last-exit.records.npz", "smoke.sweep-load.png",
                 "smoke.sweep-fluctuation.json"):  # fmt: skip
        assert (out / name).is_file(), name
    sweep = json.loads((out / "smoke.sweep-load.json").read_text())
    assert len(sweep) == 4
    lo = [r for r in sweep if r["value"] == 0.5 and r["policy"] == "last-exit"][0]
    hi = [r for r in sweep if r["value"] == 1.5 and r["policy"] == "last-exit"][0]
    assert hi["latency_mean_s"] > lo["latency_mean_s"]


def test_sweep_command_and_errors(files: dict[str, Path]) -> None:
    args = ["sweep", "--scenario", str(files["scenario"]), "--trace", str(files["trace"]), "--policy", "last-exit",
            "--out", str(files["out"]), "--requests", "200"]  # fmt: skip
    res = runner.invoke(app, [*args, "--vary", "deadline_s=0.02,0.2"])
    assert res.exit_code == 0, res.output
    assert (files["out"] / "smoke.sweep-deadline_s.md").is_file()
    res = runner.invoke(app, [*args, "--vary", "speed=1,2"])
    assert res.exit_code != 0 and "unknown sweep variable" in res.output
    res = runner.invoke(app, [*args[:6], "no-such-policy", "--vary", "load=1"])
    assert res.exit_code != 0 and "neither a policy file nor a registered policy" in res.output
    files["scenario"].write_text("[workload]\nrate = 1\n")
    res = runner.invoke(app, [*args, "--vary", "load=1"])
    assert res.exit_code != 0 and "unknown key" in res.output


def test_profile_device_feeds_a_scenario(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from distree.sim import load_scenario, simulate
    from distree.trace import trace_checkpoint

    prof = tmp_path / "device.json"
    res = runner.invoke(app, ["profile-device", "--checkpoint", str(tiny_checkpoint), "--out", str(prof),
                              "--repeats", "5", "--warmup", "1", "--batch-sizes", "1,4", "--threads", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    p = json.loads(prof.read_text())
    assert p["num_nodes"] == 4 and all(t > 0 for t in p["node_s"]) and len(p["batch_marginal"]) == 4
    tr = trace_checkpoint(tiny_checkpoint, "val", limit=64)
    (tmp_path / "s.toml").write_text(
        '[workload]\narrival = "poisson"\nrate_per_s = 5\nrequests = 50\n[devices]\nprofile = "device.json"\n'
    )
    sc = load_scenario(tmp_path / "s.toml")
    r = simulate(sc, tr, "last-exit")
    assert r.meta["compute_source"] == "profile-seconds"
    assert r.meta["node_compute_s"] == pytest.approx(p["node_s"])
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = runner.invoke(app, ["profile-device", "--checkpoint", str(tmp_path / "nothing"), "--out", str(bad)])
    assert res.exit_code != 0
