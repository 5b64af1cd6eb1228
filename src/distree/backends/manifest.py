"""The manifest of an ONNX export folder (``manifest.json``), read without torch or onnx.

An export folder written by ``distree export --format onnx`` holds one ONNX file per node and per
variant (``node1.onnx``, ``node1.int8.onnx``, ...) and this manifest::

    {
      "format": "distree-onnx-export/1",
      "checkpoint": {"path": ..., "sha256": <sha256 of model.safetensors>, "model": ..., "model_args": {...}},
      "num_nodes": 4, "num_classes": 10, "classes": [...], "input_shape": [3, 32, 32],
      "normalization": {"mean": [...], "std": [...]},   # applied before node 1 (not inside the graph)
      "cost_profile": {...},                             # as in the checkpoint and traces
      "opset": 18, "versions": {...},
      "nodes": [{"index": 0, "node": 1,
                 "inputs":  [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
                 "outputs": [{"name": "features", ...}, {"name": "logits", ...}, {"name": "exit_features", ...}],
                 "variants": {"fp32": {"file": "node1.onnx", "sha256": ...},
                              "int8": {"file": "node1.int8.onnx", "sha256": ..., "quant_format": "QDQ"}}}, ...],
      "parity": {...},   # fp32 ONNX vs torch on a test split
      "int8": {...}      # quantization settings and per-exit accuracy fp32 vs int8
    }

Output names: ``features`` is the hop tensor sent to the next node (absent on the last node),
``logits`` the exit's logits and ``exit_features`` the exit's feature vector (what traces record as
``features.<i>`` and the policies compare). Every node reads ``input``: the normalised image on
node 1, node K-1's ``features`` on node K.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import BackendError

FORMAT = "distree-onnx-export/1"
MANIFEST = "manifest.json"
VARIANTS = ("fp32", "int8")
HOP_OUTPUT = "features"
LOGITS_OUTPUT = "logits"
FEATURES_OUTPUT = "exit_features"
INPUT = "input"  # every node's input name (node 1: the normalised image; node K: node K-1's features)


def output_names(last: bool) -> list[str]:
    """A node graph's outputs, in order: the hop tensor (all nodes but the last), logits, exit features."""
    return [LOGITS_OUTPUT, FEATURES_OUTPUT] if last else [HOP_OUTPUT, LOGITS_OUTPUT, FEATURES_OUTPUT]


#: keys of the ONNX files' metadata_props, checked against the manifest when a file is loaded
META_PREFIX = "distree."


class ManifestError(BackendError):
    """An export folder or its manifest is missing, corrupt or does not belong to the given checkpoint."""


def reexport_hint(checkpoint: str | Path | None, out: str | Path) -> str:
    ck = str(checkpoint) if checkpoint else "CHECKPOINT"
    return f"re-export it with `distree export --checkpoint {ck} --format onnx --out {out}`"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_weights(path: str | Path) -> Path:
    """The weights file of a checkpoint given as its directory, its ``.safetensors`` or its ``.json``."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return p
    if p.suffix == ".json":
        return p.with_suffix(".safetensors")
    return p / "model.safetensors"


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's weights (``model.safetensors``): what identifies it in an export manifest."""
    w = checkpoint_weights(path)
    if not w.is_file():
        raise ManifestError(
            f"no checkpoint weights at {w}; pass a checkpoint directory (model.safetensors + model.json)"
        )
    return sha256_file(w)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str]  # "batch" for the dynamic batch axis
    dtype: str = "float32"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.shape[1:])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), shape=list(d["shape"]), dtype=str(d.get("dtype", "float32")))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class NodeEntry:
    index: int  # 0-based
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: dict[str, dict[str, Any]]  # variant -> {"file", "sha256", ...}

    @property
    def node(self) -> int:
        return self.index + 1

    def output(self, name: str) -> TensorSpec | None:
        return next((o for o in self.outputs if o.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "node": self.node,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "variants": self.variants,
        }


@dataclass
class Manifest:
    root: Path
    checkpoint: dict[str, Any]
    num_nodes: int
    num_classes: int
    classes: list[str]
    input_shape: list[int]
    normalization: dict[str, list[float]]
    cost_profile: dict[str, Any]
    nodes: list[NodeEntry]
    opset: int = 18
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / MANIFEST

    @property
    def checkpoint_sha256(self) -> str:
        return str(self.checkpoint.get("sha256", ""))

    def has_variant(self, variant: str) -> bool:
        return all(variant in n.variants for n in self.nodes)

    def file(self, index: int, variant: str = "fp32") -> Path:
        entry = self.node(index)
        if variant not in entry.variants:
            if variant == "int8":
                raise ManifestError(
                    f"export folder {self.root} has no int8 files; create them with "
                    f"`distree export --checkpoint {self.checkpoint.get('path', 'CHECKPOINT')} --format onnx "
                    f"--quantize int8 --out {self.root}`"
                )
            raise ManifestError(f"{self.path} lists no {variant!r} file for node {index + 1}; {self._hint()}")
        return self.root / str(entry.variants[variant]["file"])

    def node(self, index: int) -> NodeEntry:
        if not 0 <= index < self.num_nodes:
            raise IndexError(f"node index {index} out of range for an export of {self.num_nodes} nodes")
        return self.nodes[index]

    def verify_checkpoint(self, checkpoint: str | Path) -> None:
        """Raise :class:`ManifestError` unless this export was made from ``checkpoint`` (sha256 of its weights)."""
        got = checkpoint_sha256(checkpoint)
        if got != self.checkpoint_sha256:
            raise ManifestError(
                f"export folder {self.root} was made from another checkpoint: its manifest has weights sha256 "
                f"{self.checkpoint_sha256[:12]}… (from {self.checkpoint.get('path')}) but "
                f"{checkpoint_weights(checkpoint)} has {got[:12]}…; {reexport_hint(checkpoint, self.root)}"
            )

    def _hint(self) -> str:
        return reexport_hint(self.checkpoint.get("path"), self.root)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "checkpoint": self.checkpoint,
            "num_nodes": self.num_nodes,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "input_shape": self.input_shape,
            "normalization": self.normalization,
            "cost_profile": self.cost_profile,
            "opset": self.opset,
            "versions": self.versions,
            "nodes": [n.to_dict() for n in self.nodes],
            "parity": self.parity,
            "int8": self.int8,
        }

    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(self.path)
        return self.path


def read_manifest(export_dir: str | Path) -> Manifest:
    """Read and validate ``export_dir/manifest.json`` (the folder, or the manifest file itself)."""
    root = Path(export_dir)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    path = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"no export folder at {root}; {reexport_hint(None, root)}")
    if not path.is_file():
        raise ManifestError(
            f"{root} has no {MANIFEST}, so it is not a distree ONNX export; {reexport_hint(None, root)}"
        )
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); {reexport_hint(None, root)}") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else None
        raise ManifestError(f"{path} is not a distree ONNX manifest (format {got!r}, want {FORMAT!r})")
    try:
        nodes = [
            NodeEntry(
                index=int(n["index"]),
                inputs=[TensorSpec.from_dict(t) for t in n["inputs"]],
                outputs=[TensorSpec.from_dict(t) for t in n["outputs"]],
                variants={str(k): dict(v) for k, v in n["variants"].items()},
            )
            for n in d["nodes"]
        ]
        m = Manifest(
            root=root,
            checkpoint=dict(d["checkpoint"]),
            num_nodes=int(d["num_nodes"]),
            num_classes=int(d["num_classes"]),
            classes=[str(c) for c in d.get("classes", [])],
            input_shape=[int(s) for s in d["input_shape"]],
            normalization={k: [float(x) for x in v] for k, v in d.get("normalization", {}).items()},
            cost_profile=dict(d["cost_profile"]),
            nodes=nodes,
            opset=int(d.get("opset", 0)),
            versions=dict(d.get("versions", {})),
            parity=dict(d.get("parity", {})),
            int8=dict(d.get("int8", {})),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(
            f"{path} is incomplete or malformed ({type(e).__name__}: {e}); {reexport_hint(None, root)}"
        ) from e
    if [n.index for n in m.nodes] != list(range(m.num_nodes)):
        raise ManifestError(f"{path} must list nodes 0..{m.num_nodes - 1} in order; {m._hint()}")
    return m
