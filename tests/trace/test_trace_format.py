"""The trace header: validated on write and on read, one-line errors, traces of the old writer load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from distree.evaluation.synthetic import synthetic_trace
from distree.trace import TraceError, load_trace


def _write(path: Path, header: dict, n: int = 6, nodes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    tensors = {
        "logits": rng.normal(size=(n, nodes, 4)).astype(np.float32),
        "labels": np.arange(n, dtype=np.int64) % 4,
        "sample_index": np.arange(n, dtype=np.int64),
    }
    for i in range(nodes):
        tensors[f"features.{i}"] = rng.normal(size=(n, 5)).astype(np.float32)
    save_file(tensors, str(path), metadata={"distree": json.dumps(header)})
    return path


COST = {"segment_flops": [10, 20, 30], "exit_flops": [1, 1, 1], "hop_bytes": [64, 64], "hop_shapes": [[16], [16]],
        "input_bytes": 48, "output_bytes": 16}  # fmt: skip


def _old_header() -> dict:
    """What the writer wrote before format_version: Trace.meta flattened into the header."""
    return {"classes": ["a", "b", "c", "d"], "dataset": "synthetic", "split": "val", "checkpoint": "runs/x",
            "model": "small-cnn", "num_nodes": 3, "format": "distree-trace/1", "cost_profile": COST}  # fmt: skip


def _error(tmp_path: Path, header: dict) -> str:
    path = _write(tmp_path / "t.trace.safetensors", header)
    with pytest.raises(TraceError) as ei:
        load_trace(path)
    msg = str(ei.value)
    prefix = f"{path} (header): "
    assert msg.startswith(prefix) and "\n" not in msg, msg
    return msg[len(prefix) :]


def test_trace_from_the_old_writer_loads(tmp_path):
    tr = load_trace(_write(tmp_path / "old.trace.safetensors", _old_header()))
    assert tr.num_nodes == 3 and tr.num_samples == 6 and tr.cost.segment_flops == [10, 20, 30]
    assert tr.meta["split"] == "val" and tr.meta["classes"] == ["a", "b", "c", "d"] and tr.meta["format_version"] == 1
    back = load_trace(tr.save(tmp_path / "new.trace.safetensors"))
    assert back.meta == tr.meta and back.cost == tr.cost


def test_bad_trace_headers(tmp_path):
    good = _old_header()
    assert _error(tmp_path, {**good, "splt": "val"}).startswith(
        "unknown key 'splt' (allowed: backend, checkpoint, classes, cost_profile, dataset, format, format_version,"
    )
    assert _error(tmp_path, {**good, "num_nodes": "3"}) == "'num_nodes' must be an integer, got '3'"
    assert _error(tmp_path, {**good, "num_nodes": 0}) == "'num_nodes' must be >= 1, got 0"
    assert _error(tmp_path, {k: v for k, v in good.items() if k != "cost_profile"}) == (
        "missing key 'cost_profile' (record the trace again with `distree trace`)"
    )
    bad_cost = {**good, "cost_profile": {**COST, "hop_bytes": [64]}}
    assert _error(tmp_path, bad_cost) == "[cost_profile] 'hop_bytes' must have num_nodes-1=2 entries, got 1"
    assert _error(tmp_path, {**good, "num_nodes": 2}) == "'cost_profile' has 3 segments but num_nodes is 2"
    assert _error(tmp_path, {**good, "format": "x"}) == "'format' must be 'distree-trace/1', got 'x'"
    assert _error(tmp_path, {**good, "format_version": 3}).startswith("'format_version' is 3, newer than this")
    assert _error(tmp_path, {}) == (
        "missing key 'format' (a trace header says it is one; record the trace again with `distree trace`)"
    )


def test_arrays_that_do_not_match_the_header(tmp_path):
    path = _write(tmp_path / "t.trace.safetensors", {**_old_header(), "num_nodes": 4, "cost_profile": {
        **COST, "segment_flops": [1, 2, 3, 4], "exit_flops": [1, 1, 1, 1], "hop_bytes": [1, 1, 1]}})  # fmt: skip
    with pytest.raises(TraceError, match=r"lacks tensor 'features.3'; record the trace again"):
        load_trace(path)


def test_meta_beyond_the_header_keys_round_trips(tmp_path):
    tr = synthetic_trace(50, 3, seed=1)
    tr.meta.update({"split": "test", "note": "baseline", "temperature": np.float32(1.5)})
    back = load_trace(tr.save(tmp_path / "t.trace.safetensors"))
    assert back.meta["note"] == "baseline" and back.meta["temperature"] == 1.5 and back.meta["seed"] == 1
    tr.meta["bad"] = object()
    with pytest.raises(TraceError, match="cannot be written to the trace header"):
        tr.save(tmp_path / "u.trace.safetensors")
