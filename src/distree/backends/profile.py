"""Device profiles measured through the ONNX Runtime backend (``distree profile-device --backend onnx``).

Writes the same format as :func:`distree.sim.profile.profile_device` (``distree-device-profile/1``), so
the simulator and ``nominal_compute_ms`` read it unchanged. An ONNX node is one graph (segment +
exit head), so ``node_s`` is measured and ``segment_s`` / ``exit_s`` split it by the nodes' FLOPs
(``exit_s_method: "flops-share"``). Imports numpy and onnxruntime only: it runs on a device without torch.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import read_manifest

#: must equal distree.sim.scenario.PROFILE_FORMAT (importing the simulator would import torch)
PROFILE_FORMAT = "distree-device-profile/1"


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(statistics.median(ts))


def profile_onnx(
    onnx_dir: str | Path | None,
    *,
    backend: str = "onnx",
    checkpoint: str | Path | None = None,
    repeats: int = 30,
    warmup: int = 5,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int | None = None,
    progress: Callable[[int, int], Any] | None = None,
    providers: Sequence[str] = ("CPU",),
) -> dict[str, Any]:
    """Time every node of an export folder at batch 1 and ``batch_sizes``; returns the profile dict."""
    import onnxruntime as ort

    from .onnxrt import onnx_backends

    if backend not in ("onnx", "onnx-int8"):
        raise ValueError(f"profile_onnx times the onnx backends (onnx | onnx-int8), not {backend!r}")
    if onnx_dir is None:
        raise ValueError(f"backend {backend!r} needs the export folder (--onnx-dir)")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    bs = sorted({int(b) for b in batch_sizes} | {1})
    if bs[0] < 1:
        raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}")
    if threads is not None and threads < 1:
        raise ValueError("threads must be >= 1")
    manifest = read_manifest(onnx_dir)
    nodes = onnx_backends(
        manifest,
        variant="int8" if backend == "onnx-int8" else "fp32",
        checkpoint=checkpoint,
        providers=providers,
        intra_op_threads=threads,
    )
    cost = manifest.cost_profile
    n = manifest.num_nodes
    total, step = n * len(bs), 0
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, *manifest.input_shape)).astype(np.float32) for b in bs}
    batch_node_s: dict[int, list[float]] = {b: [] for b in bs}
    for node in nodes:
        for b in bs:
            x = inputs[b]
            batch_node_s[b].append(
                _median_time(partial(node.run, x), repeats if b == 1 else max(3, repeats // 4), warmup)
            )
            if not node.is_last:
                sent = node.run(x)[0]  # the next node times what this one really sends
                assert sent is not None  # every node but the last returns its activations
                inputs[b] = sent
            step += 1
            if progress is not None:
                progress(step, total)
    node_s = batch_node_s[1]
    seg_f = [float(f) for f in cost["segment_flops"]]
    exit_f = [float(f) for f in cost["exit_flops"]]
    share = [e / max(s + e, 1.0) for s, e in zip(seg_f, exit_f, strict=True)]
    exit_s = [t * sh for t, sh in zip(node_s, share, strict=True)]
    bmax = bs[-1]
    prof: dict[str, Any] = {
        "format": PROFILE_FORMAT,
        "format_version": 1,
        "backend": backend,
        "checkpoint": str(checkpoint if checkpoint is not None else manifest.checkpoint.get("path")),
        "onnx_dir": str(manifest.root),
        "model": manifest.checkpoint.get("model"),
        "model_args": manifest.checkpoint.get("model_args", {}),
        "num_nodes": n,
        "segment_flops": [int(f) for f in cost["segment_flops"]],
        "exit_flops": [int(f) for f in cost["exit_flops"]],
        "segment_s": [t - e for t, e in zip(node_s, exit_s, strict=True)],
        "exit_s": exit_s,
        "exit_s_method": "flops-share",
        "node_s": node_s,
        "flops_per_s": [(s + e) / max(t, 1e-12) for s, e, t in zip(seg_f, exit_f, node_s, strict=True)],
        "batch_sizes": bs,
        "batch_node_s": {str(b): v for b, v in batch_node_s.items()},
        "repeats": repeats,
        "warmup": warmup,
        "host": {
            "node": platform.node(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "providers": nodes[0].describe()["providers"],
            "intra_op_threads": threads,
        },
    }
    if bmax > 1:
        prof["batch_marginal"] = [max(0.0, (batch_node_s[bmax][i] / node_s[i] - 1.0) / (bmax - 1)) for i in range(n)]
    return prof
