"""ONNX Runtime backend: one node's exported graph (segment K + exit K) in an ``InferenceSession``.

Imports numpy and onnxruntime only (never torch, never the onnx package), so a node on an edge board
runs it with ``pip install onnxruntime numpy``. Files come from an export folder
(``distree export --format onnx``); each file is checked against the folder's manifest before use
(input shape, node, variant, checkpoint hash, file hash).

Execution providers are given in preference order by short name (``TensorRT``, ``CUDA``,
``OpenVINO``, ``CoreML``, ``DirectML``, ``ROCm``, ``QNN``, ``XNNPACK``, ``ACL``, ``CPU``) or by ONNX
Runtime's full name (``CUDAExecutionProvider``). Providers this onnxruntime build does not offer are
dropped with a warning; the CPU provider is always appended as the fallback; a provider listed in
``required_providers`` that is unavailable (or that the session did not take) is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendError, NodeOutput, check_input
from .manifest import META_PREFIX, Manifest, ManifestError, output_names, read_manifest, sha256_file

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = "CPUExecutionProvider"
_INSTALL_HINT = {
    "TensorrtExecutionProvider": "install onnxruntime-gpu (with TensorRT and CUDA libraries on the device)",
    "CUDAExecutionProvider": "install onnxruntime-gpu (with matching CUDA and cuDNN libraries)",
    "OpenVINOExecutionProvider": "install onnxruntime-openvino",
    "DmlExecutionProvider": "install onnxruntime-directml",
    "QNNExecutionProvider": "install onnxruntime-qnn",
    "ROCMExecutionProvider": "install onnxruntime-rocm",
}

ProviderSpec = str | tuple[str, dict[str, Any]]


def provider_name(name: str) -> str:
    """ONNX Runtime's name for a provider given by short name (``CUDA``) or full name."""
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key.lower()]
    if key.endswith("ExecutionProvider"):
        return key
    known = ", ".join(sorted({k for k in PROVIDER_ALIASES if k not in ("trt", "dml")}))
    raise ValueError(f"unknown execution provider {name!r}; use one of {known} or ONNX Runtime's full name")


def _short(full: str) -> str:
    return full.removesuffix("ExecutionProvider")


def resolve_providers(
    preferred: Sequence[ProviderSpec] = ("CPU",), required: Sequence[str] = ()
) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list to hand ONNX Runtime: ``preferred`` in order, minus the ones this build lacks
    (each dropped with a warning), with CPU last. Raises :class:`BackendError` for a ``required``
    provider this build lacks."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    req = [provider_name(r) for r in required]
    missing = [r for r in req if r not in available]
    if missing:
        hints = "; ".join(_INSTALL_HINT.get(m, f"use an onnxruntime build with {_short(m)}") for m in missing)
        raise BackendError(
            f"required execution provider(s) {', '.join(_short(m) for m in missing)} not available: this onnxruntime "
            f"{ort.__version__} build offers {', '.join(_short(a) for a in available)}. Fix: {hints}, or drop them "
            "from the required providers"
        )
    out: list[str | tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    listed = {provider_name(p if isinstance(p, str) else p[0]) for p in preferred}
    for r in req:  # a required provider is used even when it is not in the preference list
        if r not in listed and r not in seen:
            out.append(r)
            seen.add(r)
    for p in preferred:
        name, opts = (p, None) if isinstance(p, str) else (p[0], dict(p[1]))
        full = provider_name(name)
        if full in seen:
            continue
        if full not in available:
            log.warning(
                "execution provider %s is not available in this onnxruntime %s build (it offers %s); dropping it",
                _short(full),
                ort.__version__,
                ", ".join(_short(a) for a in available),
            )
            continue
        out.append(full if opts is None else (full, opts))
        seen.add(full)
    if CPU not in seen:
        out.append(CPU)
    return out


def _dims(shape: Sequence[Any]) -> list[int | str]:
    return [d if isinstance(d, int) else "batch" for d in shape]


class OnnxBackend:
    """Node ``index`` (0-based) of an ONNX export folder, run by ONNX Runtime. See :class:`SegmentBackend`.

    - ``variant``: ``"fp32"`` or ``"int8"`` (files from ``distree export --quantize int8``).
    - ``providers``: execution providers in preference order; ``required_providers``: must be used.
    - ``intra_op_threads`` / ``inter_op_threads``: ONNX Runtime thread pools (``None``: its default).
    - ``checkpoint``: when given, the export must have been made from it (sha256 of its weights).
    """

    def __init__(
        self,
        export_dir: str | Path | Manifest,
        index: int,
        *,
        variant: str = "fp32",
        providers: Sequence[ProviderSpec] = ("CPU",),
        required_providers: Sequence[str] = (),
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = 1,
        checkpoint: str | Path | None = None,
        verify_hash: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.manifest = export_dir if isinstance(export_dir, Manifest) else read_manifest(export_dir)
        m = self.manifest
        if checkpoint is not None:
            m.verify_checkpoint(checkpoint)
        if variant not in ("fp32", "int8"):
            raise ValueError(f"variant must be 'fp32' or 'int8', got {variant!r}")
        self.index = int(index)
        self.entry = m.node(self.index)
        self.variant = variant
        self.name = "onnx" if variant == "fp32" else "onnx-int8"
        self.num_nodes = m.num_nodes
        self.num_classes = m.num_classes
        self.path = m.file(self.index, variant)
        hint = m._hint()
        if not self.path.is_file():
            raise ManifestError(f"ONNX file {self.path} (node {self.index + 1}, {variant}) is missing; {hint}")
        self.in_shape = self.entry.inputs[0].row_shape
        so = ort.SessionOptions()
        if intra_op_threads is not None:
            so.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            so.inter_op_num_threads = int(inter_op_threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.requested_providers = resolve_providers(providers, required_providers)
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=self.requested_providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several unrelated types; re-raised with the file
            raise ManifestError(f"ONNX Runtime cannot load {self.path} ({type(e).__name__}: {e}); {hint}") from e
        self.providers = list(self.session.get_providers())
        for r in required_providers:
            if provider_name(r) not in self.providers:
                raise BackendError(
                    f"required execution provider {_short(provider_name(r))} is available but the session for "
                    f"{self.path} did not take it (it runs on {', '.join(map(_short, self.providers))}); see ONNX "
                    "Runtime's log above for why (missing libraries, unsupported operators), or drop it from the "
                    "required providers"
                )
        self._check_file(verify_hash)
        self._input = self.session.get_inputs()[0].name
        self._outputs = output_names(self.is_last)
        log.debug("node %d (%s): %s on %s", self.index + 1, variant, self.path, self.providers)

    @property
    def is_last(self) -> bool:
        return self.index == self.num_nodes - 1

    def _check_file(self, verify_hash: bool) -> None:
        m, hint, path = self.manifest, self.manifest._hint(), self.path
        ins = self.session.get_inputs()
        want_in = self.entry.inputs[0]
        if len(ins) != 1:
            raise ManifestError(f"{path} has {len(ins)} inputs, a distree node graph has one; {hint}")
        got = _dims(ins[0].shape)
        if got[1:] != list(want_in.shape[1:]):
            raise ManifestError(
                f"{path} takes input of shape {got} but node {self.index + 1} of this export receives "
                f"{list(want_in.shape)}; the file belongs to another node, model or export: {hint}"
            )
        names = {o.name for o in self.session.get_outputs()}
        want_out = {o.name for o in self.entry.outputs}
        if names != want_out:
            raise ManifestError(f"{path} has outputs {sorted(names)}, the manifest lists {sorted(want_out)}; {hint}")
        meta = self.session.get_modelmeta().custom_metadata_map
        checks = {
            "index": str(self.index),
            "variant": self.variant,
            "checkpoint_sha256": m.checkpoint_sha256,
        }
        for k, want in checks.items():
            have = meta.get(META_PREFIX + k)
            if have != want:
                raise ManifestError(
                    f"{path} says {k}={have!r} but {m.path} expects {want!r} for node {self.index + 1} "
                    f"({self.variant}); the file was copied from another export: {hint}"
                )
        want_sha = self.entry.variants[self.variant].get("sha256")
        if verify_hash and want_sha and sha256_file(path) != want_sha:
            raise ManifestError(f"{path} differs from the file its manifest {m.path} describes (sha256); {hint}")

    def run(self, x: np.ndarray) -> NodeOutput:
        x = check_input(x, self.in_shape, f"node {self.index + 1} ({self.name}, {self.path.name})")
        outs = self.session.run(self._outputs, {self._input: x})
        if self.is_last:
            return None, outs[0], outs[1]
        return outs[0], outs[1], outs[2]

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "file": str(self.path),
            "providers": [_short(p) for p in self.providers],
            "onnxruntime": ort.__version__,
            "quant_format": self.entry.variants[self.variant].get("quant_format"),
        }


def onnx_backends(
    export_dir: str | Path | Manifest,
    *,
    variant: str = "fp32",
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> list[OnnxBackend]:
    """Every node of an export folder, in order."""
    m = export_dir if isinstance(export_dir, Manifest) else read_manifest(export_dir)
    if checkpoint is not None:
        m.verify_checkpoint(checkpoint)
    return [OnnxBackend(m, i, variant=variant, **kwargs) for i in range(m.num_nodes)]
