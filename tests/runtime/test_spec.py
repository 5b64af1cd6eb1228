"""Cluster spec validation: every mistake gets a message naming the key and the fix."""

from __future__ import annotations

import pytest

from distree.runtime import SpecError, load_spec, parse_spec
from distree.runtime.spec import spec_toml


def test_bad_spec_errors_name_the_problem(rt, tmp_path):
    good = {
        "checkpoint": str(rt.checkpoint),
        "policy": str(rt.policy),
        "nodes": [{"address": f"127.0.0.1:{7000 + k}"} for k in range(4)],
    }
    spec = parse_spec(good, tmp_path / "ok.toml")
    assert [n.segment for n in spec.nodes] == [1, 2, 3, 4] and spec.batching.max_batch_size == 1
    cases = {
        "unknown key": ({**good, "chekpoint": "x"}, "unknown key(s) ['chekpoint']"),
        "bad address": ({**good, "nodes": [{"address": "localhost"}]}, "host:port"),
        "missing checkpoint": ({k: v for k, v in good.items() if k != "checkpoint"}, "missing 'checkpoint'"),
        "segments": ({**good, "nodes": [{"address": "a:1", "segment": 2}]}, "segments must be 1..1"),
        "tls without certs": ({**good, "tls": {"ca": str(rt.policy)}}, "needs 'cert' and 'key'"),
        "batching": ({**good, "batching": {"max_batch_size": 0}}, "max_batch_size >= 1"),
        "speed": ({**good, "nodes": [{"address": "a:1", "speed": {"kind": "warp"}}]}, "unknown kind"),
        "nominal": ({**good, "nodes": [{"address": "a:1", "nominal_compute_ms": -1}]}, "nominal_compute_ms must be"),
        "type": ({**good, "threads": "two"}, "'threads' must be a int"),
        "missing file": ({**good, "policy": "nope.json"}, "does not exist"),
        "compute mode": ({**good, "compute_mode": "gpu"}, "compute_mode"),
        "same port": ({**good, "nodes": [{"address": "a:1"}, {"address": "a:1"}]}, "both listen on"),
    }
    for name, (data, needle) in cases.items():
        with pytest.raises(SpecError) as ei:
            parse_spec(data, tmp_path / "s.toml")
        assert needle in str(ei.value), (name, str(ei.value))
    (tmp_path / "broken.toml").write_text("checkpoint = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(tmp_path / "broken.toml")
    with pytest.raises(SpecError, match="no cluster spec"):
        load_spec(tmp_path / "absent.toml")


def test_spec_toml_round_trip(rt, tmp_path):
    text = spec_toml(
        rt.checkpoint,
        rt.policy,
        [{"address": "127.0.0.1:1", "speed": {"kind": "constant", "factor": 0.5}}],
        batching={"max_batch_size": 4, "max_queue_delay_ms": 1.5},
        threads=2,
    )
    (tmp_path / "c.toml").write_text(text)
    s = load_spec(tmp_path / "c.toml")
    assert s.threads == 2 and s.batching.max_batch_size == 4 and s.nodes[0].speed == {"kind": "constant", "factor": 0.5}
