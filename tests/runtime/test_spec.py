"""Cluster spec validation: every mistake gets a message naming the key and the fix."""

from __future__ import annotations

import asyncio

import pytest

from distree.runtime import SpecError, load_spec, parse_spec
from distree.runtime.spec_toml import spec_toml


def test_bad_spec_errors_name_the_problem(rt, tmp_path):
    good = {
        "checkpoint": str(rt.checkpoint),
        "policy": str(rt.policy),
        "nodes": [{"address": f"127.0.0.1:{7000 + k}"} for k in range(4)],
    }
    spec = parse_spec(good, tmp_path / "ok.toml")
    assert [n.segment for n in spec.nodes] == [1, 2, 3, 4] and spec.batching.max_batch_size == 1
    cases = {
        "unknown key": ({**good, "chekpoint": "x"}, "s.toml: unknown key 'chekpoint' (allowed: access, backend,"),
        "bad address": ({**good, "nodes": [{"address": "localhost"}]}, "[[nodes]] #1 'address' must be 'host:port'"),
        "missing checkpoint": (
            {k: v for k, v in good.items() if k != "checkpoint"},
            "node 1 runs the torch backend, so the spec needs 'checkpoint' (the folder written by `distree train`)",
        ),
        "onnx without export": (
            {**good, "nodes": [{"address": "127.0.0.1:1", "backend": "onnx-int8"}]},
            "[[nodes]] #1 'backend' is onnx-int8 but no 'onnx_dir' is set",
        ),
        "bad backend": ({**good, "backend": "tensorrt"}, "'backend' must be 'torch', 'onnx' or 'onnx-int8', got"),
        "segments": ({**good, "nodes": [{"address": "127.0.0.1:1", "segment": 2}]}, "'nodes' must have segments 1..1"),
        "tls without certs": ({**good, "tls": {"ca": str(rt.policy)}}, "[[nodes]] #1 [tls] is on, so every node needs"),
        "batching": ({**good, "batching": {"max_batch_size": 0}}, "[batching] 'max_batch_size' must be >= 1, got 0"),
        "speed": (
            {**good, "nodes": [{"address": "127.0.0.1:1", "speed": {"kind": "warp"}}]},
            "'speed' is not a valid speed",
        ),
        "nominal": (
            {**good, "nodes": [{"address": "127.0.0.1:1", "nominal_compute_ms": -1}]},
            "[[nodes]] #1 'nominal_compute_ms' must be > 0",
        ),
        "type": ({**good, "threads": "two"}, "'threads' must be an integer, got 'two'"),
        "bool is not int": ({**good, "threads": True}, "'threads' must be an integer, got True"),
        "missing file": ({**good, "policy": "nope.json"}, "'policy' = 'nope.json' does not exist"),
        "compute mode": ({**good, "compute_mode": "gpu"}, "'compute_mode' must be 'auto', 'inline' or 'thread', got"),
        "inline ms": ({**good, "inline_compute_ms": -1.0}, "'inline_compute_ms' must be >= 0"),
        "hop factor": (
            {**good, "hop_timeout_factor": 0.5},
            "'hop_timeout_factor' must be 0 (no hop timeout) or at least 1",
        ),
        "hop factor < 0": ({**good, "hop_timeout_factor": -1.0}, "'hop_timeout_factor' must be >= 0"),
        "hop margin": ({**good, "hop_timeout_margin_ms": -5.0}, "'hop_timeout_margin_ms' must be >= 0"),
        "same port": (
            {**good, "nodes": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:1"}]},
            "both listen on 127.0.0.1:1",
        ),
        "newer version": ({**good, "format_version": 2}, "'format_version' is 2, newer than this distree reads"),
    }
    for name, (data, needle) in cases.items():
        with pytest.raises(SpecError) as ei:
            parse_spec(data, tmp_path / "s.toml")
        msg = str(ei.value)
        assert needle in msg and msg.startswith(str(tmp_path / "s.toml")) and "\n" not in msg, (name, msg)
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


def test_compute_mode_and_inline_compute_ms_are_spec_keys(rt, tmp_path):
    """Documented in docs/runtime.md and read by the nodes; a spec that sets them loads with their values."""
    text = spec_toml(
        rt.checkpoint, rt.policy, [{"address": "127.0.0.1:1"}], compute_mode="thread", inline_compute_ms=2.5
    )
    (tmp_path / "c.toml").write_text(text)
    s = load_spec(tmp_path / "c.toml")
    assert s.compute_mode == "thread" and s.inline_compute_ms == 2.5
    d = parse_spec({"checkpoint": str(rt.checkpoint), "policy": str(rt.policy), "nodes": [{"address": "127.0.0.1:1"}]})
    assert d.compute_mode == "auto" and d.inline_compute_ms == 5.0


def test_spec_keeps_its_attribute_interface(rt, tmp_path):
    nodes = [{"address": f"127.0.0.1:{7000 + k}", "segment": 4 - k} for k in range(4)]
    text = spec_toml(rt.checkpoint, rt.policy, nodes, batching={"max_batch_size": 3}, threads=2)
    (tmp_path / "c.toml").write_text(text)
    s = load_spec(tmp_path / "c.toml")
    assert s.path == (tmp_path / "c.toml").resolve() and s.pid_file.name == "c.toml.pids"
    assert s.num_nodes == 4 and [n.segment for n in s.nodes] == [1, 2, 3, 4]
    assert s.node(1).address == "127.0.0.1:7003" and s.node(1).listen == "127.0.0.1:7003"
    assert s.threads == 2 and s.batching.max_batch_size == 3 and s.batching.max_queue_delay_ms == 0.0
    assert s.checkpoint == rt.checkpoint.resolve() and s.tls is None and s.model_name == "distree"
    with pytest.raises(SpecError, match="node 5 is not in .*nodes are numbered 1..4"):
        s.node(5)


def test_spec_file_errors_are_one_line(rt, tmp_path):
    good = spec_toml(rt.checkpoint, rt.policy, [{"address": "127.0.0.1:7001"}], batching={"max_batch_size": 4})
    f = tmp_path / "cluster.toml"
    node = 'address = "127.0.0.1:7001"'
    cases = {
        "unknown key": (
            good.replace("max_batch_size = 4", "max_batch_size = 4\nmax_delay_ms = 2"),
            "[batching] unknown key 'max_delay_ms' (allowed: max_batch_size, max_queue_delay_ms; "
            "did you mean 'max_queue_delay_ms'?)",
        ),
        "wrong type": (
            good.replace("max_batch_size = 4", 'max_batch_size = "4"'),
            "[batching] 'max_batch_size' must be an integer, got '4'",
        ),
        "out of range": (
            good.replace(node, node + "\nmetrics_port = 70000"),
            "[[nodes]] #1 'metrics_port' must be <= 65535, got 70000",
        ),
        "missing key": (good.replace(node, "segment = 1"), "[[nodes]] #1 missing key 'address' (host:port where"),
    }
    for name, (text, needle) in cases.items():
        f.write_text(text)
        with pytest.raises(SpecError) as ei:
            load_spec(f)
        msg = str(ei.value)
        assert msg.startswith(f"{f}: {needle}") and "\n" not in msg, (name, msg)


def test_hop_timeout_keys(rt, tmp_path):
    """Documented in docs/runtime.md; the link of a node reads them."""
    from distree.runtime.link import ChainLink
    from distree.runtime.metrics import NodeMetrics

    text = spec_toml(
        rt.checkpoint,
        rt.policy,
        [{"address": f"127.0.0.1:{7000 + k}"} for k in range(4)],
        hop_timeout_factor=3.0,
        hop_timeout_margin_ms=50.0,
    )
    (tmp_path / "c.toml").write_text(text)
    s = load_spec(tmp_path / "c.toml")
    assert s.hop_timeout_factor == 3.0 and s.hop_timeout_margin_ms == 50.0

    async def link_of_node2() -> ChainLink:
        link = ChainLink.to_successor(s, 2, metrics=NodeMetrics(2))
        await link.close()
        return link

    link = asyncio.run(link_of_node2())
    assert link.hop_timeout_factor == 3.0 and link.hop_timeout_pad_s == pytest.approx(0.1)  # 2 hops ahead
    assert (
        parse_spec(
            {
                "checkpoint": str(rt.checkpoint),
                "policy": str(rt.policy),
                "nodes": [{"address": "127.0.0.1:1"}],
                "hop_timeout_factor": 0.0,
            },
            tmp_path / "z.toml",
        ).hop_timeout_factor
        == 0.0
    )


def test_free_ports_of_separate_calls_never_repeat():
    from distree.runtime.cluster import free_ports

    drawn = [p for _ in range(50) for p in free_ports(4)]
    assert len(set(drawn)) == len(drawn) == 200
