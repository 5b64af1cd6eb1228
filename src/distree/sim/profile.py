"""Device profiles: time each segment and exit head of a checkpoint on this machine.

The JSON profile (format ``distree-device-profile/1``) holds, per node, the median seconds of the
segment (``segment_s``), of the exit head (``exit_s``) and of both (``node_s``) at batch 1, the
implied FLOP/s, and the batch scaling ``batch_marginal`` (extra time per extra row, relative to
batch 1, fitted between batch 1 and the largest batch timed). Scenarios use it either as seconds
per node (same model) or as FLOP/s (another model on the same device).
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .._schema import FORMAT_VERSION, FormatVersion, Schema, read_json, require_table, validate
from ..errors import ProfileError

log = logging.getLogger(__name__)

PROFILE_FORMAT = "distree-device-profile/1"
_FIX = "re-create it with `distree profile-device --checkpoint C --out P.json`"


class HostInfo(Schema):
    """Where a profile was measured."""

    node: str | None = None
    machine: str | None = None
    processor: str | None = None
    python: str | None = None
    torch: str | None = None
    torch_threads: int | None = None
    onnxruntime: str | None = None
    providers: list[str] | None = None
    intra_op_threads: int | None = None


class DeviceProfile(Schema):
    """The device-profile file (JSON) written by :func:`profile_device` / ``distree profile-device``."""

    format: Literal["distree-device-profile/1"] = Field(description="a device profile says it is one")
    format_version: FormatVersion = 1
    backend: str = "torch"  # what was timed: torch, onnx or onnx-int8
    checkpoint: str | None = None
    onnx_dir: str | None = None
    model: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    num_nodes: int | None = Field(None, ge=1)
    segment_flops: list[int] = Field(min_length=1)
    exit_flops: list[int] = Field(min_length=1)
    segment_s: list[float] | None = None
    exit_s: list[float] | None = None
    exit_s_method: str | None = None
    node_s: list[float] = Field(min_length=1, description="median seconds per node (segment + exit) at batch 1")
    flops_per_s: list[float] = Field(min_length=1)
    batch_sizes: list[int] | None = None
    batch_node_s: dict[str, list[float]] | None = None
    batch_marginal: list[float] | None = None
    repeats: int | None = None
    warmup: int | None = None
    host: HostInfo | None = None

    @model_validator(mode="after")
    def _one_entry_per_node(self) -> DeviceProfile:
        n = len(self.segment_flops)
        for key in ("exit_flops", "segment_s", "exit_s", "node_s", "flops_per_s", "batch_marginal"):
            v = getattr(self, key)
            if v is not None and len(v) != n:
                raise ValueError(f"'{key}' has {len(v)} entries but 'segment_flops' has {n}: one entry per node")
            if v is not None and key not in ("exit_flops", "flops_per_s") and any(x < 0 for x in v):
                raise ValueError(f"'{key}' must not be negative")
        if any(x <= 0 for x in self.flops_per_s):
            raise ValueError("'flops_per_s' must be > 0 for every node")
        return self


def load_device_profile(path: str | Path) -> dict[str, Any]:
    """Read and validate a device profile; returns its dict plus ``_path`` (the file)."""
    path = Path(path)
    d = read_json(path, error=ProfileError, what="device profile", hint="create one with `distree profile-device`")
    d = require_table(d, source=str(path), error=ProfileError, what="device profile")
    prof = validate(DeviceProfile, d, source=str(path), error=ProfileError, missing_fix=_FIX)
    out = prof.model_dump(exclude_none=True)
    out["_path"] = str(path)
    return out


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(statistics.median(ts))


def _segment_then_exit(segment: Callable[[Any], Any], head: Callable[[Any], Any], x: Any) -> Any:
    return head(segment(x))


def profile_device(
    checkpoint: str | Path | None,
    *,
    repeats: int = 30,
    warmup: int = 5,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    backend: str = "torch",
    onnx_dir: str | Path | None = None,
    providers: Sequence[str] = ("CPU",),
) -> dict[str, Any]:
    """Measure a checkpoint's per-node compute time on this machine (CPU). Returns the profile dict.

    ``backend``: ``torch``, or ``onnx`` / ``onnx-int8`` to time the export folder ``onnx_dir`` through
    ONNX Runtime (``providers`` in preference order; ``checkpoint`` optional, checked against the export).
    """
    if backend != "torch":
        from ..backends.profile import profile_onnx

        return profile_onnx(
            onnx_dir,
            backend=backend,
            checkpoint=checkpoint,
            repeats=repeats,
            warmup=warmup,
            batch_sizes=batch_sizes,
            threads=threads,
            progress=progress,
            providers=providers,
        )
    import torch

    from ..checkpoint import load_checkpoint

    if checkpoint is None:
        raise ValueError("the torch backend needs a checkpoint (--checkpoint)")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    bs = sorted({int(b) for b in batch_sizes} | {1})
    if bs[0] < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if threads is not None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        torch.set_num_threads(int(threads))
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    cost = model.cost_profile()
    n = model.num_nodes
    total_steps = n * (2 + len(bs) - 1)
    step = 0
    seg_s: list[float] = []
    exit_s: list[float] = []
    batch_node_s: dict[int, list[float]] = {b: [] for b in bs}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        inputs = {b: torch.randn((b, *model.input_shape), generator=gen) for b in bs}
        for i in range(n):
            h = inputs[1]
            seg = model.segments[i]
            head = model.exits[i]
            out = seg(h)
            seg_s.append(_median_time(partial(seg, h), repeats, warmup))
            exit_s.append(_median_time(partial(head, out), repeats, warmup))
            step += 2
            if progress is not None:
                progress(step, total_steps)
            batch_node_s[1].append(seg_s[-1] + exit_s[-1])
            for b in bs[1:]:
                hb = inputs[b]
                batch_node_s[b].append(
                    _median_time(partial(_segment_then_exit, seg, head, hb), max(3, repeats // 4), warmup)
                )
                inputs[b] = seg(hb)
                step += 1
                if progress is not None:
                    progress(step, total_steps)
            inputs[1] = out
    node_s = [s + e for s, e in zip(seg_s, exit_s, strict=True)]
    flops = [float(a + b) for a, b in zip(cost.segment_flops, cost.exit_flops, strict=True)]
    bmax = bs[-1]
    marginal = (
        [max(0.0, (batch_node_s[bmax][i] / node_s[i] - 1.0) / (bmax - 1)) for i in range(n)] if bmax > 1 else None
    )
    prof: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": "torch",
        "checkpoint": str(checkpoint),
        "model": meta.get("model"),
        "model_args": meta.get("model_args", {}),
        "num_nodes": n,
        "segment_flops": list(cost.segment_flops),
        "exit_flops": list(cost.exit_flops),
        "segment_s": seg_s,
        "exit_s": exit_s,
        "node_s": node_s,
        "flops_per_s": [f / max(t, 1e-12) for f, t in zip(flops, node_s, strict=True)],
        "batch_sizes": bs,
        "batch_node_s": {str(b): v for b, v in batch_node_s.items()},
        "repeats": repeats,
        "warmup": warmup,
        "host": {
            "node": platform.node(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    if marginal is not None:
        prof["batch_marginal"] = marginal
    return prof
