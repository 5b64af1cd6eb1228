"""int8 static quantization: each node calibrated on the int8 predecessor's outputs; accuracy on digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from distree.backends import quantize as quantize_mod
from distree.backends import read_manifest
from distree.backends.onnxrt import OnnxBackend

pytestmark = pytest.mark.xdist_group("onnx-export")


def test_each_node_is_calibrated_on_what_the_int8_predecessor_sends(tiny_export, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "export"
    shutil.copytree(tiny_export[0], out)
    for f in out.glob("*.int8.onnx"):
        f.unlink()
    m = read_manifest(out)
    calib = np.random.default_rng(1).standard_normal((40, *m.input_shape)).astype(np.float32)
    seen: list[np.ndarray] = []
    real_reader = quantize_mod._reader

    def spy(name: str, data: np.ndarray, batch_size: int):
        seen.append(data.copy())
        return real_reader(name, data, batch_size)

    monkeypatch.setattr(quantize_mod, "_reader", spy)
    settings = quantize_mod.quantize_chain(m, calib, quant_format="qoperator", batch_size=16)
    m.save()
    assert settings["quant_format"] == "qoperator" and settings["calibration_samples"] == 40
    assert len(seen) == 4
    np.testing.assert_array_equal(seen[0], calib)
    x8, x32 = calib, calib
    for i in range(3):
        x8 = OnnxBackend(out, i, variant="int8").run(x8)[0]
        x32 = OnnxBackend(out, i).run(x32)[0]
        np.testing.assert_allclose(seen[i + 1], x8, rtol=1e-6, atol=1e-6)  # the int8 node's output ...
        assert np.abs(seen[i + 1] - x32).max() > 1e-4  # ... which is not the fp32 node's output
    assert OnnxBackend(out, 0, variant="int8").describe()["quant_format"] == "qoperator"


def test_bad_quantization_settings(tiny_export) -> None:
    m = read_manifest(tiny_export[0])
    x = np.zeros((4, *m.input_shape), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown quantization format 'int4'"):
        quantize_mod.quantize_chain(m, x, quant_format="int4")
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_mod.quantize_chain(m, x, method="mse")
    with pytest.raises(ValueError, match="calibration inputs must be"):
        quantize_mod.quantize_chain(m, np.zeros((4, 3, 8, 8), dtype=np.float32))


#: stated floor for the int8 last exit of the digits model (fp32 reaches about 0.95 after 4 epochs)
DIGITS_INT8_FLOOR = 0.85


@pytest.mark.slow
def test_int8_on_digits_stays_within_one_point_of_fp32(tmp_path_factory) -> None:
    from distree.backends.export import export_checkpoint
    from distree.training import TrainConfig, train

    ckpt = tmp_path_factory.mktemp("digits_int8") / "ckpt"
    cfg = TrainConfig(
        model="small-cnn", num_nodes=4, dataset="digits", epochs=4, objective="distree", val_fraction=0.25, seed=0
    )
    train(cfg, ckpt)
    # the torchscript exporter is much faster to run and quantization does not depend on which exporter wrote the graph
    m = export_checkpoint(ckpt, ckpt.parent / "export", quantize="int8", exporter="torchscript")
    q = m.int8
    assert q["split"] == "test" and q["samples"] > 300
    assert q["settings"]["split"] == "train" and q["settings"]["calibration_samples"] == 512
    fp32, int8 = q["accuracy_fp32"][-1], q["accuracy_int8"][-1]
    assert int8 >= DIGITS_INT8_FLOOR, q
    assert fp32 - int8 <= 0.01, q
    assert m.parity["argmax_agreement"] == [1.0] * 4
