"""int8 static quantization of an export folder's node graphs with ``onnxruntime.quantization``.

Nodes are quantized in chain order. Node 1 is calibrated on normalised training inputs; node K + 1
on what the *quantized* node K outputs for them, i.e. the features it will really receive on a
device that runs every node in int8. Each fp32 graph is first pre-processed (shape inference and
ONNX Runtime's graph optimisations, e.g. folding batch norms into convolutions) as the quantization
tool recommends, then quantized per channel (weights) with activation ranges from the calibrator.

Formats: ``qdq`` (QuantizeLinear/DequantizeLinear pairs around float ops; ONNX Runtime fuses them
into integer kernels, and TensorRT / OpenVINO read this form) or ``qoperator`` (QLinearConv and
friends). Graph inputs and outputs stay float32, so int8 and fp32 nodes can be mixed in a chain.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import HOP_OUTPUT, Manifest, sha256_file

log = logging.getLogger(__name__)

QUANT_FORMATS = ("qdq", "qoperator")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def _reader(name: str, data: np.ndarray, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(0, len(data), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            s = next(self._it, None)
            return None if s is None else {name: np.ascontiguousarray(data[s : s + batch_size])}

        def rewind(self) -> None:
            self._it = iter(range(0, len(data), batch_size))

    return Reader()


def _hop(path: Path, data: np.ndarray, batch_size: int) -> np.ndarray:
    """The hop tensor a node file outputs for ``data`` (its successor's calibration inputs)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    parts = [sess.run([HOP_OUTPUT], {name: data[s : s + batch_size]})[0] for s in range(0, len(data), batch_size)]
    return np.concatenate(parts).astype(np.float32)


def quantize_chain(
    manifest: Manifest,
    calibration: np.ndarray,
    *,
    quant_format: str = "qdq",
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str | None = None,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``node<K>.int8.onnx`` next to every fp32 file of ``manifest`` and list them in it (not saved).

    ``calibration``: float32 (n, *input_shape) normalised training inputs. ``activation_type``:
    ``uint8`` or ``int8`` (default: uint8, the operand type of x86's and ARM's 8-bit dot-product
    instructions). Returns the settings used.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import graph_io, node_file, stamp

    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"unknown quantization format {quant_format!r}; use one of {', '.join(QUANT_FORMATS)}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if tuple(calibration.shape[1:]) != tuple(manifest.input_shape) or len(calibration) < 1:
        raise ValueError(
            f"calibration inputs must be (n >= 1, {', '.join(map(str, manifest.input_shape))}), got {calibration.shape}"
        )
    fmt = QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator
    cal = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    if activation_type not in (None, "uint8", "int8"):
        raise ValueError(f"activation type must be uint8 or int8, got {activation_type!r}")
    act = QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8
    data = calibration
    with tempfile.TemporaryDirectory(prefix="distree-quant-") as tmp:
        for entry in manifest.nodes:
            i = entry.index
            if progress is not None:
                progress(f"quantizing node {i + 1}/{manifest.num_nodes} on {len(data)} calibration samples")
            src = manifest.root / str(entry.variants["fp32"]["file"])
            pre = Path(tmp) / f"node{i + 1}.pre.onnx"
            dst = manifest.root / node_file(i, "int8")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            quantize_static(
                str(pre),
                str(dst),
                _reader(entry.inputs[0].name, data, batch_size),
                quant_format=fmt,
                per_channel=per_channel,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=cal,
                calibration_providers=["CPUExecutionProvider"],
                # a batch norm's scale is a vector: its channel axis is 0 (the tool assumes 1)
                extra_options={"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}},
            )
            stamp(
                dst,
                {
                    "index": i,
                    "variant": "int8",
                    "checkpoint_sha256": manifest.checkpoint_sha256,
                    "num_nodes": manifest.num_nodes,
                    "quant_format": quant_format,
                },
            )
            ins, outs = graph_io(dst)
            if [t.name for t in ins] != [t.name for t in entry.inputs] or {o.name for o in outs} != {
                o.name for o in entry.outputs
            }:
                raise RuntimeError(f"quantization changed the interface of {dst}: {ins} -> {outs}")
            entry.variants["int8"] = {"file": dst.name, "sha256": sha256_file(dst), "quant_format": quant_format}
            if i < manifest.num_nodes - 1:
                data = _hop(dst, data, 256)  # what node i+1 really receives: the int8 predecessor's output
    return {
        "quant_format": quant_format,
        "calibration_method": method,
        "per_channel": per_channel,
        "activation_type": "int8" if act == QuantType.QInt8 else "uint8",
        "weight_type": "int8",
        "calibration_samples": int(len(calibration)),
        "calibration_inputs": "each node calibrated on the int8 predecessor's outputs",
    }
