"""Record a trace: one inference pass of a checkpoint over a dataset split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..backends.base import SegmentBackend, run_chain
from ..checkpoint import load_checkpoint
from ..data import ImageDataset, iterate_batches, load_split
from ..models import MultiExitNetwork
from .format import Trace

log = logging.getLogger(__name__)


@torch.no_grad()
def record_trace(
    model: MultiExitNetwork,
    ds: ImageDataset,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    meta: dict | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    backends: Sequence[SegmentBackend] | None = None,
) -> Trace:
    """Run ``model`` over ``ds`` once; keep every exit's logits and features.

    ``backends``: compute the nodes with these (one per node, e.g. ONNX Runtime sessions) instead of
    ``model``'s torch modules; ``model`` then only supplies the cost profile. The trace's ``backend``
    metadata says which computed it.
    """
    model.eval().to(device)
    if backends is not None and len(backends) != model.num_nodes:
        raise ValueError(f"got {len(backends)} backends for a model of {model.num_nodes} nodes")
    logits: list[np.ndarray] = []
    feats: list[list[np.ndarray]] = [[] for _ in range(model.num_nodes)]
    done = 0
    for x, _ in iterate_batches(ds, batch_size, device=device):
        if backends is None:
            outs = [(o.logits.float().cpu().numpy(), o.features.float().cpu().numpy()) for o in model(x)]
        else:
            outs = run_chain(list(backends), x.float().cpu().numpy())
        logits.append(np.stack([lg for lg, _ in outs], axis=1))  # (B, N, K)
        for i, (_, f) in enumerate(outs):
            feats[i].append(f)  # (B, F_i)
        done += int(x.shape[0])
        if on_batch is not None:
            on_batch(done, len(ds))
    info: dict = {"backend": "torch"}
    if backends is not None:
        info = {"backend": backends[0].name, "backend_info": backends[0].describe()}
    return Trace(
        logits=np.concatenate(logits),
        features=[np.concatenate(f) for f in feats],
        labels=ds.labels.numpy().astype(np.int64),
        cost=model.cost_profile(),
        meta={"classes": ds.classes, "dataset": ds.name, **info, **(meta or {})},
    )


def checkpoint_split(
    side: dict,
    split: str,
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    checkpoint: str | Path = "",
) -> ImageDataset:
    """The split a checkpoint was trained with (same val carve-out: same seed and fraction), normalised
    as in training."""
    tc = side.get("train_config", {})
    name = dataset or side.get("dataset") or tc.get("dataset")
    if not name:
        raise ValueError(f"checkpoint {checkpoint} does not say its dataset; pass --dataset")
    ds = load_split(
        name,
        split,
        data_dir or tc.get("data_dir"),
        val_fraction=tc.get("val_fraction", 0.1),
        seed=tc.get("seed", 0),
    )
    norm = side.get("normalization")
    if norm:
        ds.mean, ds.std = tuple(norm["mean"]), tuple(norm["std"])
    return ds


def trace_checkpoint(
    checkpoint: str | Path,
    split: str,
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    limit: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    backend: str = "torch",
    onnx_dir: str | Path | None = None,
    providers: Sequence[str] = ("CPU",),
) -> Trace:
    """Trace a checkpoint on the split it was trained with (same val carve-out: same seed and fraction).

    ``backend``: ``torch`` (default), or ``onnx`` / ``onnx-int8`` to record what ONNX Runtime computes
    from the export folder ``onnx_dir`` (which must have been exported from this checkpoint), so that
    policies are calibrated on what the devices compute.
    """
    model, side = load_checkpoint(checkpoint)
    backends = None
    if backend != "torch":
        from ..backends import open_backends

        backends = open_backends(backend, checkpoint=checkpoint, onnx_dir=onnx_dir, providers=providers)
    ds = checkpoint_split(side, split, data_dir=data_dir, dataset=dataset, checkpoint=checkpoint)
    if limit is not None:
        ds = ds.subset(np.arange(min(limit, len(ds))))
    return record_trace(
        model,
        ds,
        batch_size=batch_size,
        device=device,
        on_batch=on_batch,
        backends=backends,
        meta={"split": split, "checkpoint": str(checkpoint), "model": side.get("model"), "num_nodes": model.num_nodes},
    )
