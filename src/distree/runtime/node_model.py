"""What a node knows of its model: the backend that computes its segment and exit, and the shapes,
classes and normalisation around it — from the torch checkpoint or from an ONNX export's manifest.

An ONNX node (``backend = "onnx"`` or ``"onnx-int8"`` in the cluster spec) is built from the export
folder alone and never imports torch, so it runs on a device with only the ``edge`` extra installed
(numpy, onnxruntime, grpcio). A torch node loads the checkpoint as before. :func:`load_node_model` is
what a node core opens: either kind, checked against the spec's number of nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend
from .spec import ClusterSpec

log = logging.getLogger(__name__)


@dataclass
class NodeModel:
    """Node ``k``'s compute and the facts about the network the node needs to serve it."""

    backend: Backend
    backend_name: str  # torch | onnx | onnx-int8
    num_nodes: int
    num_classes: int
    input_shape: tuple[int, ...]  # one input row of node 1: (C, H, W)
    in_shape: tuple[int, ...]  # one input row of this node
    sidecar: dict[str, Any] = field(default_factory=dict)  # model, classes, normalization (as in model.json)

    @property
    def label(self) -> str:
        return str(self.sidecar.get("model", ""))


def torch_node_model(model: Any, sidecar: dict[str, Any] | None, k: int) -> NodeModel:
    """Node ``k`` (1-based) of a loaded :class:`~distree.models.MultiExitNetwork`."""
    from ..backends.torch_backend import TorchBackend

    cost = model.cost_profile()
    input_shape = tuple(int(s) for s in model.input_shape)
    side = dict(sidecar or {})
    side.setdefault("model", getattr(model, "model_name", "") or "")
    return NodeModel(
        backend=TorchBackend(model, k - 1),
        backend_name="torch",
        num_nodes=int(model.num_nodes),
        num_classes=int(model.num_classes),
        input_shape=input_shape,
        in_shape=input_shape if k == 1 else tuple(int(s) for s in cost.hop_shapes[k - 2]),
        sidecar=side,
    )


def onnx_node_model(spec: ClusterSpec, k: int, replica: int = 1) -> NodeModel:
    """Node ``k`` (replica ``replica`` of its tier) from its ONNX export folder (no torch)."""
    from ..backends.manifest import checkpoint_weights, read_manifest
    from ..backends.onnxrt import OnnxBackend

    kind, onnx_dir, providers = spec.node_backend(k, replica)
    assert onnx_dir is not None  # the spec's validator requires it for ONNX nodes
    m = read_manifest(onnx_dir)
    # the export must come from the spec's checkpoint when that is here (a device may hold only the export)
    ck = spec.checkpoint if spec.checkpoint is not None and checkpoint_weights(spec.checkpoint).is_file() else None
    backend = OnnxBackend(
        m,
        k - 1,
        variant="int8" if kind == "onnx-int8" else "fp32",
        providers=providers,
        intra_op_threads=spec.threads,
        checkpoint=ck,
    )
    log.info("node %d runs %s from %s on %s", k, kind, onnx_dir, providers)
    sidecar: dict[str, Any] = {
        "model": str(m.checkpoint.get("model", "")),
        "classes": list(m.classes),
        "normalization": dict(m.normalization) if m.normalization else None,
    }
    return NodeModel(
        backend=backend,
        backend_name=kind,
        num_nodes=m.num_nodes,
        num_classes=m.num_classes,
        input_shape=tuple(int(s) for s in m.input_shape),
        in_shape=tuple(int(s) for s in backend.in_shape),
        sidecar=sidecar,
    )


def open_node_model(spec: ClusterSpec, k: int, replica: int = 1) -> NodeModel:
    """Node ``k``'s model (replica ``replica`` of its tier) through the backend the spec gives it."""
    kind, _, _ = spec.node_backend(k, replica)
    if kind != "torch":
        return onnx_node_model(spec, k, replica)
    import torch

    from ..checkpoint import load_checkpoint

    torch.set_num_threads(spec.threads)
    assert spec.checkpoint is not None  # the spec's validator requires it for torch nodes
    model, sidecar = load_checkpoint(spec.checkpoint)
    return torch_node_model(model, sidecar, k)


def load_node_model(
    spec: ClusterSpec, k: int, replica: int = 1, *, model: Any = None, sidecar: dict[str, Any] | None = None
) -> NodeModel:
    """Node ``k``'s model for a node core: of ``model`` (a loaded network, with its ``sidecar``) when
    given, else through the spec's backend (:func:`open_node_model`); it must have one segment per
    node of the spec."""
    nm = torch_node_model(model, sidecar, k) if model is not None else open_node_model(spec, k, replica)
    if nm.backend_name == "torch":
        import torch

        torch.set_num_threads(spec.threads)
    if nm.num_nodes != spec.num_nodes:
        where = spec.checkpoint if nm.backend_name == "torch" else spec.node_backend(k, replica)[1]
        raise ValueError(
            f"{where} has {nm.num_nodes} segments but the spec lists {spec.num_nodes} "
            "nodes; list one [[nodes]] entry per segment"
        )
    return nm
