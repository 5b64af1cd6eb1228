"""ONNX export of the tiny checkpoint: files, manifest, parity with torch per node at any batch size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from distree.backends import checkpoint_sha256, read_manifest
from distree.backends.onnxrt import OnnxBackend
from distree.backends.torch_backend import TorchBackend
from distree.checkpoint import load_checkpoint, read_sidecar

pytestmark = pytest.mark.xdist_group("onnx-export")


def test_files_pass_the_checker_and_the_manifest_describes_them(tiny_export, tiny_checkpoint: Path) -> None:
    out, _ = tiny_export
    m = read_manifest(out)
    side = read_sidecar(tiny_checkpoint)
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["format"] == "distree-onnx-export/1"
    assert m.num_nodes == 4 and m.num_classes == side["num_classes"] and m.classes == side["classes"]
    assert m.checkpoint["sha256"] == checkpoint_sha256(tiny_checkpoint)
    assert m.normalization == side["normalization"] and m.cost_profile == side["cost_profile"]
    assert m.input_shape == side["input_shape"]
    hops = side["cost_profile"]["hop_shapes"]
    for i, node in enumerate(m.nodes):
        assert node.node == i + 1
        assert [t.name for t in node.inputs] == ["input"]
        assert node.inputs[0].shape == ["batch", *(side["input_shape"] if i == 0 else hops[i - 1])]
        names = [o.name for o in node.outputs]
        assert names == (["logits", "exit_features"] if i == 3 else ["features", "logits", "exit_features"])
        assert all(t.dtype == "float32" and t.shape[0] == "batch" for t in node.inputs + node.outputs)
        assert node.output("logits").shape == ["batch", side["num_classes"]]
        assert node.output("exit_features").shape == ["batch", side["feature_dims"][i]]
        if i < 3:
            assert node.output("features").shape == ["batch", *hops[i]]
        for variant in ("fp32", "int8"):
            path = m.file(i, variant)
            onnx.checker.check_model(str(path), full_check=True)
            props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
            assert props["distree.index"] == str(i) and props["distree.variant"] == variant
            assert props["distree.checkpoint_sha256"] == m.checkpoint_sha256
    assert m.int8["settings"]["split"] == "train" and m.int8["settings"]["calibration_samples"] > 0


def test_parity_with_torch_is_recorded_and_printed(tiny_export) -> None:
    out, output = tiny_export
    par = read_manifest(out).parity
    assert par["split"] == "test" and par["samples"] > 100 and par["reference"] == "torch"
    assert max(par["max_abs_logit_diff"]) < 1e-4
    assert par["argmax_agreement"] == [1.0] * 4
    assert par["accuracy"] == par["accuracy_reference"]
    assert "max |dlogit| onnx fp32 vs torch" in output and "manifest:" in output
    q = read_manifest(out).int8
    assert len(q["accuracy_fp32"]) == len(q["accuracy_int8"]) == 4
    assert q["accuracy_fp32"] == par["accuracy"]  # fp32 reference of the int8 check is the checked ONNX chain


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_each_node_matches_torch_at_any_batch_size(tiny_export, tiny_checkpoint: Path, batch: int) -> None:
    out, _ = tiny_export
    model, _ = load_checkpoint(tiny_checkpoint)
    x = np.random.default_rng(batch).standard_normal((batch, *model.input_shape)).astype(np.float32)
    for i in range(model.num_nodes):
        tb, ob = TorchBackend(model, i), OnnxBackend(out, i, intra_op_threads=1)
        assert tb.in_shape == ob.in_shape and tb.num_classes == ob.num_classes and tb.is_last == ob.is_last
        th, tl, tf = tb.run(x)
        oh, ol, of = ob.run(x)
        assert ol.dtype == of.dtype == np.float32 and ol.shape == (batch, model.num_classes)
        np.testing.assert_allclose(ol, tl, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(of, tf, atol=1e-4, rtol=1e-4)
        if i < model.num_nodes - 1:
            assert oh is not None and oh.dtype == np.float32
            np.testing.assert_allclose(oh, th, atol=1e-4, rtol=1e-4)
            x = th
        else:
            assert oh is None and th is None


def test_int8_nodes_return_float32_close_to_fp32(tiny_export, tiny_checkpoint: Path) -> None:
    from distree.data import iterate_batches
    from distree.trace.record import checkpoint_split

    out, _ = tiny_export
    model, side = load_checkpoint(tiny_checkpoint)
    ds = checkpoint_split(side, "test")  # int8 ranges are calibrated on real data: compare on real data
    x = next(iterate_batches(ds, 256))[0].numpy()
    x8 = x
    for i in range(model.num_nodes):
        b32, b8 = OnnxBackend(out, i), OnnxBackend(out, i, variant="int8")
        assert b8.name == "onnx-int8" and b8.describe()["quant_format"] == "qdq"
        h32, l32, _ = b32.run(x)
        h8, l8, f8 = b8.run(x8)
        assert l8.dtype == f8.dtype == np.float32 and l8.shape == l32.shape
        assert (l8.argmax(1) == l32.argmax(1)).mean() >= 0.9
        x, x8 = h32, h8
