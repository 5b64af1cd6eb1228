"""The torch backend is ``MultiExitNetwork.forward_segment`` behind the numpy interface."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from distree.backends import SegmentBackend, open_backends, run_chain
from distree.backends.torch_backend import TorchBackend
from distree.models import create_model


def test_torch_backend_equals_forward_segment() -> None:
    torch.manual_seed(0)
    net = create_model("small-cnn", num_nodes=3, width=8).eval()
    x = np.random.default_rng(0).standard_normal((4, *net.input_shape)).astype(np.float32)
    backends = [TorchBackend(net, i) for i in range(3)]
    assert all(isinstance(b, SegmentBackend) for b in backends)
    assert [b.is_last for b in backends] == [False, False, True]
    h = torch.from_numpy(x)
    with torch.no_grad():
        for i, b in enumerate(backends):
            want_h, want = net.forward_segment(i, h)
            got_h, lg, ft = b.run(h.numpy())
            np.testing.assert_allclose(lg, want.logits.numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ft, want.features.numpy(), rtol=1e-6, atol=1e-6)
            assert b.in_shape == tuple(h.shape[1:])
            if i < 2:
                np.testing.assert_allclose(got_h, want_h.numpy(), rtol=1e-6, atol=1e-6)
            else:
                assert got_h is None
            h = want_h
    outs = run_chain(backends, x)
    assert len(outs) == 3 and outs[-1][0].shape == (4, net.num_classes)


def test_torch_backend_rejects_bad_inputs() -> None:
    net = create_model("small-cnn", num_nodes=2, width=8)
    b = TorchBackend(net, 0)
    with pytest.raises(ValueError, match=r"node 1 \(torch\): input must have shape \(B, 1, 8, 8\)"):
        b.run(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(IndexError):
        TorchBackend(net, 2)
    ro = np.zeros((1, 1, 8, 8), dtype=np.float32)
    ro.setflags(write=False)
    assert b.run(ro)[1].shape == (1, net.num_classes)


def test_open_backends_arguments(tiny_checkpoint) -> None:
    assert [b.name for b in open_backends("torch", checkpoint=tiny_checkpoint)] == ["torch"] * 4
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        open_backends("tflite")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        open_backends("torch")


def test_importing_distree_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, distree, distree.backends; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
