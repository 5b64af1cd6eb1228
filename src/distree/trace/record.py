"""Record a trace: one inference pass of a checkpoint over a dataset split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

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
) -> Trace:
    """Run ``model`` over ``ds`` once; keep every exit's logits and features."""
    model.eval().to(device)
    logits: list[np.ndarray] = []
    feats: list[list[np.ndarray]] = [[] for _ in range(model.num_nodes)]
    done = 0
    for x, _ in iterate_batches(ds, batch_size, device=device):
        outs = model(x)
        logits.append(torch.stack([o.logits.float() for o in outs], dim=1).cpu().numpy())  # (B, N, K)
        for i, o in enumerate(outs):
            feats[i].append(o.features.float().cpu().numpy())  # (B, F_i)
        done += int(x.shape[0])
        if on_batch is not None:
            on_batch(done, len(ds))
    return Trace(
        logits=np.concatenate(logits),
        features=[np.concatenate(f) for f in feats],
        labels=ds.labels.numpy().astype(np.int64),
        cost=model.cost_profile(),
        meta={"classes": ds.classes, "dataset": ds.name, **(meta or {})},
    )


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
) -> Trace:
    """Trace a checkpoint on the split it was trained with (same val carve-out: same seed and fraction)."""
    model, side = load_checkpoint(checkpoint)
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
    if limit is not None:
        ds = ds.subset(np.arange(min(limit, len(ds))))
    return record_trace(
        model,
        ds,
        batch_size=batch_size,
        device=device,
        on_batch=on_batch,
        meta={"split": split, "checkpoint": str(checkpoint), "model": side.get("model"), "num_nodes": model.num_nodes},
    )
