"""Bad inputs to the ONNX Runtime backend: each error names the file or setting and the fix."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from distree.backends import BackendError, ManifestError, open_backends, read_manifest
from distree.backends.onnxrt import OnnxBackend, provider_name, resolve_providers

pytestmark = pytest.mark.xdist_group("onnx-export")
AVAILABLE = set(ort.get_available_providers())


@pytest.fixture
def export_copy(tiny_export, tmp_path: Path) -> Path:
    dst = tmp_path / "export"
    shutil.copytree(tiny_export[0], dst)
    return dst


@pytest.fixture
def other_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint with one weight changed: same model, different sha256."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, dst)
    state = load_file(str(dst / "model.safetensors"))
    k = next(iter(state))
    state[k] = state[k] + 1.0
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_onnx_file(export_copy: Path) -> None:
    (export_copy / "node2.onnx").unlink()
    with pytest.raises(ManifestError) as e:
        OnnxBackend(export_copy, 1)
    msg = str(e.value)
    assert "node2.onnx" in msg and "missing" in msg and "distree export" in msg and str(export_copy) in msg


def test_manifest_from_another_checkpoint(export_copy: Path, other_checkpoint: Path, tiny_checkpoint: Path) -> None:
    OnnxBackend(export_copy, 0, checkpoint=tiny_checkpoint)  # the right checkpoint passes
    with pytest.raises(ManifestError) as e:
        OnnxBackend(export_copy, 0, checkpoint=other_checkpoint)
    msg = str(e.value)
    assert "another checkpoint" in msg and "sha256" in msg and str(other_checkpoint) in msg
    assert f"distree export --checkpoint {other_checkpoint} --format onnx --out {export_copy}" in msg
    with pytest.raises(ManifestError, match="another checkpoint"):
        open_backends("onnx-int8", checkpoint=other_checkpoint, onnx_dir=export_copy)


def test_file_whose_input_shape_does_not_match(export_copy: Path) -> None:
    shutil.copy(export_copy / "node2.onnx", export_copy / "node3.onnx")  # node 2's graph where node 3's should be
    with pytest.raises(ManifestError) as e:
        OnnxBackend(export_copy, 2)
    msg = str(e.value)
    assert "node3.onnx" in msg and "takes input of shape" in msg and "distree export" in msg


def test_file_from_another_node_variant_or_export(export_copy: Path) -> None:
    shutil.copy(export_copy / "node1.int8.onnx", export_copy / "node1.onnx")  # same shapes, wrong variant
    with pytest.raises(ManifestError, match=r"node1\.onnx says variant='int8'"):
        OnnxBackend(export_copy, 0)
    m = onnx.load(str(export_copy / "node2.onnx"))
    m.doc_string = "edited"
    onnx.save(m, str(export_copy / "node2.onnx"))
    with pytest.raises(ManifestError, match=r"node2\.onnx differs from the file its manifest"):
        OnnxBackend(export_copy, 1)
    OnnxBackend(export_copy, 1, verify_hash=False)  # the graph itself is still a valid node 2


@pytest.mark.skipif("CUDAExecutionProvider" in AVAILABLE, reason="this onnxruntime build has CUDA")
def test_required_provider_unavailable() -> None:
    with pytest.raises(BackendError) as e:
        resolve_providers(["CUDA", "CPU"], required=["CUDA"])
    msg = str(e.value)
    assert "CUDA" in msg and "not available" in msg and "onnxruntime-gpu" in msg and "drop them" in msg


@pytest.mark.skipif("OpenVINOExecutionProvider" in AVAILABLE, reason="this onnxruntime build has OpenVINO")
def test_required_provider_error_from_the_backend(export_copy: Path) -> None:
    with pytest.raises(BackendError, match="required execution provider"):
        OnnxBackend(export_copy, 0, providers=["CPU"], required_providers=["OpenVINO"])
    b = OnnxBackend(export_copy, 0, required_providers=["CPU"])
    assert b.providers == ["CPUExecutionProvider"]


def test_unavailable_preferred_providers_are_dropped_with_a_warning(export_copy: Path, caplog) -> None:
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider"]
    missing = [p for p in wanted if p not in AVAILABLE]
    if not missing:
        pytest.skip("this onnxruntime build has every provider tried here")
    with caplog.at_level(logging.WARNING, logger="distree.backends.onnxrt"):
        b = OnnxBackend(export_copy, 0, providers=["TensorRT", "CUDA", "OpenVINO", "CPU"])
    assert b.providers[-1] == "CPUExecutionProvider" and not set(missing) & set(b.providers)
    dropped = [r.getMessage() for r in caplog.records if "dropping it" in r.getMessage()]
    assert len(dropped) == len(missing)
    assert all(any(p.removesuffix("ExecutionProvider") in d for d in dropped) for p in missing)
    assert resolve_providers(["CUDA"])[-1] == "CPUExecutionProvider"  # CPU is always the fallback


def test_provider_names() -> None:
    assert provider_name("TensorRT") == "TensorrtExecutionProvider"
    assert provider_name("cuda") == "CUDAExecutionProvider"
    assert provider_name("OpenVINOExecutionProvider") == "OpenVINOExecutionProvider"
    with pytest.raises(ValueError, match="unknown execution provider 'gpu'"):
        provider_name("gpu")


def test_manifest_missing_corrupt_or_foreign(export_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no export folder"):
        read_manifest(tmp_path / "nowhere")
    (export_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(export_copy)
    (export_copy / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ManifestError, match="not a distree ONNX manifest"):
        read_manifest(export_copy)
    (export_copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="has no manifest.json"):
        OnnxBackend(export_copy, 0)


def test_export_without_int8_files(export_copy: Path) -> None:
    d = json.loads((export_copy / "manifest.json").read_text())
    for n in d["nodes"]:
        n["variants"].pop("int8")
    (export_copy / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="no int8 files.*--quantize int8"):
        OnnxBackend(export_copy, 0, variant="int8")
    with pytest.raises(ValueError, match="needs the export folder"):
        open_backends("onnx")


def test_bad_run_inputs(export_copy: Path) -> None:
    b = OnnxBackend(export_copy, 1)
    good = np.zeros((2, *b.in_shape), dtype=np.float32)
    assert b.run(good)[1].shape == (2, b.num_classes)
    with pytest.raises(ValueError, match=r"node 2 .*must have shape \(B, "):
        b.run(np.zeros((2, 1, 8, 8), dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        b.run(good.astype(np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        b.run(good.tolist())
