"""User mistakes on the command line: exit code 2, one readable line on stderr, no traceback.

Library text is printed as it is: square brackets (``[workload]``, ``[inf, inf, inf]``) survive.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from distree.cli import app
from distree.cli._common import DistreeGroup
from distree.errors import SpecError
from distree.evaluation.synthetic import synthetic_trace
from distree.models.cost import CostProfile
from distree.policies import create_policy
from distree.runtime.spec_toml import spec_toml
from distree.trace import Trace

runner = CliRunner()


def _one_error_line(res, needle: str) -> str:
    """The command failed with code 2 and its last line is ``error: ...`` containing ``needle``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, res.output
    return last


@pytest.fixture()
def trace_file(tmp_path: Path) -> Path:
    return synthetic_trace(300, 3, seed=1).save(tmp_path / "t.trace.safetensors")


def test_bad_scenario_table_keeps_its_brackets(tmp_path, trace_file):
    sc = tmp_path / "s.toml"
    sc.write_text('[workload]\narrival = "poisson"\nrate_per_s = 5\nfoo = 1\n[devices]\nflops_per_s = 1e9\n')
    res = runner.invoke(app, ["simulate", "--scenario", str(sc), "--trace", str(trace_file), "--policy", "last-exit"])
    line = _one_error_line(res, f"{sc}: [workload] unknown key 'foo' (allowed: arrival, clients,")
    assert res.output.strip() == line  # nothing else printed


def test_bad_spec_table_keeps_its_brackets(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    pol = create_policy("last-exit", 1).save(tmp_path / "p.json")
    spec = tmp_path / "cluster.toml"
    spec.write_text(spec_toml(ck, pol, [{"address": "127.0.0.1:7001"}], batching={"max_batch": 4}))
    res = runner.invoke(app, ["cluster", "up", "--spec", str(spec)])
    _one_error_line(res, f"{spec}: [batching] unknown key 'max_batch' (allowed: max_batch_size, max_queue_delay_ms")
    res = runner.invoke(app, ["serve", "--spec", str(spec), "--node", "1"])
    _one_error_line(res, "[batching] unknown key 'max_batch'")


def test_compute_mode_is_accepted_by_the_cli(tmp_path):
    """`compute_mode = "thread"` used to be refused as an unknown key; now the spec loads (and no cluster runs)."""
    spec = tmp_path / "cluster.toml"
    text = spec_toml(tmp_path / "ck", tmp_path / "p.json", [{"address": "127.0.0.1:7001"}], compute_mode="thread")
    spec.write_text(text)
    res = runner.invoke(app, ["cluster", "down", "--spec", str(spec)])
    _one_error_line(res, "no pid file")


def _hopeless_trace(path: Path) -> Path:
    """Every exit but the last is always wrong: calibrating at 0 pp drop keeps every threshold at inf."""
    n, nodes, k = 200, 4, 3
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, size=n)
    logits = np.zeros((n, nodes, k), dtype=np.float32)
    for i in range(nodes):
        target = labels if i == nodes - 1 else (labels + 1) % k
        logits[np.arange(n), i, target] = 5.0
    feats = [rng.normal(size=(n, 4)).astype(np.float32) for _ in range(nodes)]
    cost = CostProfile([100] * nodes, [1] * nodes, [16] * (nodes - 1))
    tr = Trace(logits=logits, features=feats, labels=labels.astype(np.int64), cost=cost, meta={"split": "val"})
    return tr.save(path)


def test_calibrate_prints_the_thresholds_with_their_brackets(tmp_path):
    tr = _hopeless_trace(tmp_path / "v.trace.safetensors")
    out = tmp_path / "p.json"
    args = ["calibrate", "--trace", str(tr), "--policy", "confidence", "--max-accuracy-drop", "0", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "confidence {}: thresholds [inf, inf, inf] (last node always exits)" in res.output


def test_misspelt_policy_parameter_is_one_line(tmp_path, trace_file):
    args = ["calibrate", "--trace", str(trace_file), "--policy", "distree", "--param", "mesure=tv"]
    res = runner.invoke(app, [*args, "--max-accuracy-drop", "1", "--out", str(tmp_path / "p.json")])
    line = _one_error_line(res, "policy 'distree': unknown parameter 'mesure' (allowed: first, measure;")
    assert line.endswith("did you mean 'measure'?)")
    assert not (tmp_path / "p.json").exists()


def test_incomplete_policy_file_is_one_line(tmp_path, trace_file):
    pf = create_policy("confidence", 3, [0.9, 0.9, 0.0]).save(tmp_path / "p.json")
    d = json.loads(pf.read_text())
    del d["thresholds"]
    pf.write_text(json.dumps(d))
    res = runner.invoke(app, ["evaluate", "--trace", str(trace_file), "--policies", "none", "--policy-files", str(pf),
                              "--out", str(tmp_path / "rep")])  # fmt: skip
    _one_error_line(res, f"{pf}: missing key 'thresholds' (")
    assert "re-run `distree calibrate` to write a complete policy file" in res.output
    sc = tmp_path / "s.toml"
    sc.write_text('[workload]\narrival = "poisson"\nrate_per_s = 5\nrequests = 10\n[devices]\nflops_per_s = 1e9\n')
    res = runner.invoke(app, ["simulate", "--scenario", str(sc), "--trace", str(trace_file), "--policy", str(pf)])
    _one_error_line(res, f"{pf}: missing key 'thresholds'")


def test_broken_checkpoint_is_one_line(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.json").write_text(json.dumps({"format": "distree-checkpoint/1", "model": "small-cnn"}))
    res = runner.invoke(app, ["trace", "--checkpoint", str(ck), "--split", "val", "--out", str(tmp_path / "t")])
    _one_error_line(res, f"{ck / 'model.json'}: missing key 'num_nodes'")


def test_any_distree_error_from_a_command_is_one_line():
    demo = typer.Typer(cls=DistreeGroup)

    @demo.command("load")
    def load() -> None:
        raise SpecError("cluster.toml: [tls] give both client_cert and client_key, or neither")

    @demo.command("other")
    def other() -> None:  # a second command, so that "load" is a subcommand as in the real app
        pass

    res = runner.invoke(demo, ["load"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output == "error: cluster.toml: [tls] give both client_cert and client_key, or neither\n"
