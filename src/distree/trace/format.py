"""Exit traces: every exit's outputs for every sample of a split, plus the cost profile.

A trace is what offline evaluation, calibration and the simulator consume. File format: one
safetensors file (``*.trace.safetensors`` by convention) holding

- ``logits``: float32 (n, N, K) — exit i's logits for sample j at ``[j, i]``;
- ``features.<i>``: float32 (n, F_i) — exit i's feature vector (the input of its last linear layer);
- ``labels``: int64 (n,);
- ``sample_index``: int64 (n,) — position of each sample in its split;

and, in the safetensors header metadata under key ``distree``, a JSON document (:class:`TraceHeader`)
with ``format`` (``distree-trace/1``), ``format_version``, ``cost_profile``, ``num_nodes``, ``classes``,
``split``, ``dataset``, ``checkpoint``, ``model``, ``seed``, ``backend`` (what computed the exits:
``torch``, ``onnx`` or ``onnx-int8``; older traces lack it and were made by torch) and ``meta`` (any other entries of
:attr:`Trace.meta`). :func:`load_trace` validates the header and the shapes and returns a :class:`Trace`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from .._schema import FORMAT_VERSION, FormatVersion, Schema, one_line, validate
from ..errors import TraceError
from ..models.cost import CostProfile, CostProfileTable

FORMAT = "distree-trace/1"
_FIX = "record the trace again with `distree trace`"


class TraceHeader(Schema):
    """The JSON header of a trace file."""

    format: Literal["distree-trace/1"] = Field(description="a trace header says it is one")
    format_version: FormatVersion = 1
    num_nodes: int = Field(ge=1, description="the number of exits")
    cost_profile: CostProfileTable
    classes: list[str] | None = None
    dataset: str | None = None
    split: str | None = None
    checkpoint: str | None = None
    model: str | None = None
    seed: int | None = None
    backend: str | None = None  # what computed the exits: torch, onnx or onnx-int8 (absent: torch)
    meta: dict[str, Any] = Field(default_factory=dict)  # any other entries of Trace.meta

    @model_validator(mode="after")
    def _consistent(self) -> TraceHeader:
        if len(self.cost_profile.segment_flops) != self.num_nodes:
            raise ValueError(
                f"'cost_profile' has {len(self.cost_profile.segment_flops)} segments but num_nodes is {self.num_nodes}"
            )
        return self


#: Trace.meta entries that are header keys of their own; the others travel in the header's ``meta`` table.
_META_KEYS = ("classes", "dataset", "split", "checkpoint", "model", "seed", "backend")


@dataclass
class Trace:
    logits: np.ndarray  # (n, N, K) float32
    features: list[np.ndarray]  # N arrays, (n, F_i) float32
    labels: np.ndarray  # (n,) int64
    cost: CostProfile
    meta: dict[str, Any] = field(default_factory=dict)
    sample_index: np.ndarray | None = None  # (n,) int64

    def __post_init__(self) -> None:
        if self.logits.ndim != 3:
            raise TraceError(f"trace logits must be (n, N, K), got shape {self.logits.shape}")
        n, nn_, _ = self.logits.shape
        if len(self.features) != nn_:
            raise TraceError(f"trace has {nn_} exits of logits but {len(self.features)} feature arrays")
        for i, f in enumerate(self.features):
            if f.ndim != 2 or f.shape[0] != n:
                raise TraceError(f"features of exit {i} must be ({n}, F), got {f.shape}")
        if self.labels.shape != (n,):
            raise TraceError(f"labels must be ({n},), got {self.labels.shape}")
        if self.cost.num_nodes != nn_:
            raise TraceError(f"cost profile has {self.cost.num_nodes} nodes but the trace has {nn_} exits")
        if self.sample_index is None:
            self.sample_index = np.arange(n, dtype=np.int64)

    @property
    def num_samples(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.logits.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[2])

    @cached_property
    def probs(self) -> np.ndarray:
        """Softmax of the logits, (n, N, K) float32."""
        z = self.logits - self.logits.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    @cached_property
    def predictions(self) -> np.ndarray:
        """(n, N) int64 argmax per exit."""
        return self.logits.argmax(axis=-1)

    @cached_property
    def correct(self) -> np.ndarray:
        """(n, N) bool: exit i right on sample j."""
        return self.predictions == self.labels[:, None]

    def exit_accuracy(self) -> np.ndarray:
        return self.correct.mean(axis=0)

    def subset(self, idx: np.ndarray) -> Trace:
        idx = np.asarray(idx)
        return Trace(
            logits=self.logits[idx],
            features=[f[idx] for f in self.features],
            labels=self.labels[idx],
            cost=self.cost,
            meta=dict(self.meta),
            sample_index=self.sample_index[idx] if self.sample_index is not None else None,
        )

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {
            "logits": np.ascontiguousarray(self.logits, dtype=np.float32),
            "labels": np.ascontiguousarray(self.labels, dtype=np.int64),
            "sample_index": np.ascontiguousarray(self.sample_index, dtype=np.int64),
        }
        for i, f in enumerate(self.features):
            tensors[f"features.{i}"] = np.ascontiguousarray(f, dtype=np.float32)
        own = {k: self.meta[k] for k in _META_KEYS if self.meta.get(k) is not None}
        skip = {*_META_KEYS, "format", "format_version", "num_nodes", "cost_profile", "meta"}
        other = {k: v for k, v in self.meta.items() if k not in skip}
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_nodes": self.num_nodes,
            "cost_profile": self.cost.to_dict(),
            **own,
            **({"meta": other} if other else {}),
        }
        try:
            header = json.loads(json.dumps(header, default=_jsonable))
        except (TypeError, ValueError) as e:
            raise TraceError(f"{path}: {one_line(e)}") from None
        validate(TraceHeader, header, source=str(path), error=TraceError)  # what is written must read back
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"distree": json.dumps(header)})
        tmp.replace(path)
        return path


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace file written by :meth:`Trace.save`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TraceError(f"no trace file at {path}; create one with `distree trace --checkpoint C --split val --out T`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = json.loads((f.metadata() or {}).get("distree", "{}"))
            keys = set(f.keys())
            arrays = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # noqa: BLE001
        raise TraceError(f"trace file {path} is corrupt or not a safetensors file: {one_line(e)}") from e
    if not isinstance(header, dict):
        raise TraceError(f"{path}: the trace header must be a JSON object; {_FIX}")
    h = validate(TraceHeader, header, source=f"{path} (header)", error=TraceError, missing_fix=_FIX)
    meta: dict[str, Any] = {
        "format": h.format,
        "format_version": h.format_version,
        "num_nodes": h.num_nodes,
        **{k: getattr(h, k) for k in _META_KEYS if getattr(h, k) is not None},
        **h.meta,
    }
    missing = [k for k in ("logits", "labels", *(f"features.{i}" for i in range(h.num_nodes))) if k not in arrays]
    if missing:
        raise TraceError(f"trace file {path} lacks tensor {missing[0]!r}; {_FIX}")
    try:
        return Trace(
            logits=arrays["logits"],
            features=[arrays[f"features.{i}"] for i in range(h.num_nodes)],
            labels=arrays["labels"],
            cost=h.cost_profile.build(),
            meta=meta,
            sample_index=arrays.get("sample_index"),
        )
    except TraceError as e:
        raise TraceError(f"trace file {path}: {one_line(e)}; {_FIX}") from None


def _jsonable(v: Any) -> Any:
    """numpy scalars and arrays in Trace.meta, as JSON."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"Trace.meta value {v!r} ({type(v).__name__}) cannot be written to the trace header")
