"""The ONNX Runtime backend, the manifest reader and ONNX device profiles work where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("onnx-export")

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnx"):  # neither torch nor the onnx package on the device
                raise ImportError(f"{name} is not installed on this device")
            return None

    sys.meta_path.insert(0, NoTorch())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_the_import_hook_blocks_torch() -> None:
    r = run_without_torch("import torch")
    assert r.returncode != 0 and "torch is not installed on this device" in r.stderr


def test_onnx_backend_runs_without_torch(tiny_export, tmp_path: Path) -> None:
    out, _ = tiny_export
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = f"""
    import json, sys
    import numpy as np
    from distree.backends import read_manifest, run_chain
    from distree.backends.onnxrt import OnnxBackend
    from distree.backends.profile import profile_onnx

    m = read_manifest({str(out)!r})
    x = np.load({str(tmp_path / "x.npy")!r})
    res = {{}}
    for variant in ("fp32", "int8"):
        chain = [OnnxBackend(m, i, variant=variant, intra_op_threads=1) for i in range(m.num_nodes)]
        res[variant] = [lg.tolist() for lg, _ in run_chain(chain, x)]
    prof = profile_onnx({str(out)!r}, backend="onnx-int8", repeats=2, warmup=0, batch_sizes=[1, 2], threads=1)
    res["node_s"] = prof["node_s"]
    res["torch_loaded"] = any(k == "torch" or k.startswith("torch.") for k in sys.modules)
    print(json.dumps(res))
    """
    r = run_without_torch(code)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["torch_loaded"] is False
    assert len(res["node_s"]) == 4 and all(t > 0 for t in res["node_s"])

    from distree.backends.base import run_chain
    from distree.backends.onnxrt import onnx_backends

    want = run_chain(onnx_backends(out), x)
    for i, (lg, _) in enumerate(want):
        np.testing.assert_allclose(np.asarray(res["fp32"][i]), lg, rtol=1e-5, atol=1e-5)
    assert np.asarray(res["int8"]).shape == (4, 5, 4)
