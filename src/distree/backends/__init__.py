"""Node backends: what computes segment K + exit K on a device.

- :class:`SegmentBackend` (``base``): the interface, ``run(x float32 (B, *in_shape)) -> (h | None, logits, feats)``.
- ``torch``: :class:`~distree.backends.torch_backend.TorchBackend` wraps a ``MultiExitNetwork`` node.
- ``onnx`` / ``onnx-int8``: :class:`~distree.backends.onnxrt.OnnxBackend` runs one file of an export
  folder (``distree export --format onnx [--quantize int8]``) in ONNX Runtime; it and the manifest
  reader import neither torch nor onnx.
- ``export``: torch → ONNX per node, parity check, int8 static quantization (needs torch, onnx,
  onnxruntime; the ``onnx`` extra).

Importing this package imports numpy only; the backends load their engine when built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import BACKENDS, BackendError, NodeOutput, SegmentBackend, check_input, run_chain
from .manifest import Manifest, ManifestError, checkpoint_sha256, read_manifest

__all__ = [
    "BACKENDS",
    "BackendError",
    "Manifest",
    "ManifestError",
    "NodeOutput",
    "SegmentBackend",
    "check_input",
    "checkpoint_sha256",
    "open_backends",
    "read_manifest",
    "run_chain",
]


def open_backends(
    backend: str,
    *,
    checkpoint: str | Path | None = None,
    onnx_dir: str | Path | None = None,
    providers: Sequence[Any] = ("CPU",),
    required_providers: Sequence[str] = (),
    threads: int | None = None,
) -> list[SegmentBackend]:
    """Every node of a model through ``backend`` (``torch`` | ``onnx`` | ``onnx-int8``), in chain order.

    ``torch`` needs ``checkpoint``; the ONNX backends need ``onnx_dir`` and, when ``checkpoint`` is
    given, check that the export was made from it. ``threads``: intra-op threads (ONNX Runtime) for
    the ONNX backends; the torch backend uses torch's global setting.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if checkpoint is None:
            raise ValueError("the torch backend needs a checkpoint (--checkpoint)")
        from .torch_backend import torch_backends_from_checkpoint

        return list(torch_backends_from_checkpoint(checkpoint))
    if onnx_dir is None:
        q = " --quantize int8" if backend == "onnx-int8" else ""
        raise ValueError(
            f"backend {backend!r} needs the export folder (--onnx-dir); create it with "
            f"`distree export --checkpoint C --format onnx{q} --out DIR`"
        )
    from .onnxrt import onnx_backends

    return list(
        onnx_backends(
            onnx_dir,
            variant="int8" if backend == "onnx-int8" else "fp32",
            checkpoint=checkpoint,
            providers=providers,
            required_providers=required_providers,
            intra_op_threads=threads,
        )
    )
