"""CLI: distree export → trace --backend onnx|onnx-int8 → profile-device --backend onnx; bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distree.cli import app
from distree.trace import load_trace

pytestmark = pytest.mark.xdist_group("onnx-export")
runner = CliRunner()


def flat(res) -> str:
    """The command's output with line wrapping undone (error messages wrap at the terminal width)."""
    return " ".join(res.output.split())


def test_export_prints_parity_per_exit(tiny_export) -> None:
    out, output = tiny_export
    assert f"exported 4 nodes to {out}" in output
    rows = [ln for ln in output.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 4 and all(ln.count("|") == 8 for ln in rows)  # fp32 columns + the two int8 columns
    assert "int8 (qdq, minmax" in output and "last-exit accuracy" in output


def test_trace_with_the_onnx_backends_matches_torch(tiny_export, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out, _ = tiny_export
    paths = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        paths[backend] = tmp_path / f"{backend}.trace.safetensors"
        args = ["trace", "--checkpoint", str(tiny_checkpoint), "--split", "test", "--out", str(paths[backend])]
        res = runner.invoke(app, [*args, "--backend", backend, "--onnx-dir", str(out)])
        assert res.exit_code == 0, res.output
        assert f"({backend})" in res.output
    t, o, q = (load_trace(paths[b]) for b in ("torch", "onnx", "onnx-int8"))
    assert (t.meta["backend"], o.meta["backend"], q.meta["backend"]) == ("torch", "onnx", "onnx-int8")
    assert o.meta["backend_info"]["providers"] == ["CPU"] and q.meta["backend_info"]["quant_format"] == "qdq"
    np.testing.assert_array_equal(o.predictions, t.predictions)  # every exit, every sample
    np.testing.assert_allclose(o.logits, t.logits, atol=1e-4)
    for fo, ft in zip(o.features, t.features, strict=True):
        np.testing.assert_allclose(fo, ft, atol=1e-4)
    np.testing.assert_array_equal(o.labels, t.labels)
    assert o.cost == t.cost
    assert (q.predictions == o.predictions).mean() > 0.9
    assert not np.array_equal(q.logits, o.logits)  # int8 really computed something else


def test_profile_device_through_onnx_feeds_a_scenario(tiny_export, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from distree.sim import load_scenario, simulate
    from distree.trace import trace_checkpoint

    out, _ = tiny_export
    common = ["--repeats", "4", "--warmup", "1", "--batch-sizes", "1,4", "--threads", "1"]
    res = runner.invoke(app, ["profile-device", "--checkpoint", str(tiny_checkpoint), "--out",
                              str(tmp_path / "torch.json"), *common])  # fmt: skip
    assert res.exit_code == 0, res.output
    for backend in ("onnx", "onnx-int8"):
        prof = tmp_path / f"{backend}.json"
        res = runner.invoke(app, ["profile-device", "--backend", backend, "--onnx-dir", str(out), "--out", str(prof),
                                  *common])  # fmt: skip
        assert res.exit_code == 0, res.output
    pt = json.loads((tmp_path / "torch.json").read_text())
    po = json.loads((tmp_path / "onnx.json").read_text())
    assert set(pt) - {"host"} <= set(po) and po["backend"] == "onnx" and pt["backend"] == "torch"
    assert po["format"] == pt["format"] and po["segment_flops"] == pt["segment_flops"]
    assert all(t > 0 for t in po["node_s"]) and len(po["batch_marginal"]) == 4
    np.testing.assert_allclose(np.add(po["segment_s"], po["exit_s"]), po["node_s"])
    assert set(po["batch_node_s"]) == {"1", "4"} and po["host"]["providers"] == ["CPU"]
    (tmp_path / "s.toml").write_text(
        '[workload]\narrival = "poisson"\nrate_per_s = 5\nrequests = 50\n[devices]\nprofile = "onnx-int8.json"\n'
    )
    r = simulate(load_scenario(tmp_path / "s.toml"), trace_checkpoint(tiny_checkpoint, "val", limit=32), "last-exit")
    assert r.meta["compute_source"] == "profile-seconds"
    assert r.meta["node_compute_s"] == pytest.approx(json.loads((tmp_path / "onnx-int8.json").read_text())["node_s"])


def test_bad_arguments_fail_with_the_fix(tiny_export, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out, _ = tiny_export
    ck = ["--checkpoint", str(tiny_checkpoint)]
    res = runner.invoke(app, ["export", *ck, "--format", "tflite", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "unknown export format 'tflite'" in flat(res)
    res = runner.invoke(app, ["export", *ck, "--quantize", "int4", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "unknown quantization 'int4'" in flat(res)
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "no checkpoint sidecar" in flat(res)
    tr = ["trace", *ck, "--split", "test", "--out", str(tmp_path / "t.trace.safetensors")]
    res = runner.invoke(app, [*tr, "--backend", "onnx"])
    assert res.exit_code != 0 and "--onnx-dir" in flat(res) and "distree export" in flat(res)
    res = runner.invoke(app, [*tr, "--backend", "onnx", "--onnx-dir", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "no export folder" in flat(res)
    res = runner.invoke(app, [*tr, "--backend", "onnx", "--onnx-dir", str(out), "--providers", "warp-drive"])
    assert res.exit_code != 0 and "unknown execution provider" in flat(res)
    res = runner.invoke(app, ["profile-device", "--out", str(tmp_path / "p.json")])
    assert res.exit_code != 0 and "needs a checkpoint" in flat(res)


def test_export_that_disagrees_with_torch_writes_no_manifest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    res = runner.invoke(app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--atol", "0",
                              "--exporter", "torchscript"])  # fmt: skip
    assert res.exit_code != 0 and "disagree with torch" in flat(res) and "manifest was not written" in flat(res)
    assert (out / "node1.onnx").is_file() and not (out / "manifest.json").exists()
    res = runner.invoke(app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
                              "--exporter", "torchscript", "--parity-limit", "50"])  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["versions"]["exporter"] == "torchscript" and m["parity"]["samples"] == 50 and m["int8"] == {}
