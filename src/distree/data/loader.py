"""Batching, normalisation and CIFAR-style augmentation on in-memory tensors (no worker processes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .datasets import ImageDataset


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 normalised (B, C, H, W)."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel translation (zero padding, as a padded random crop) + horizontal flip."""
    b, _, h, w = x.shape  # (B, C, H, W)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    rows = dy.view(b, 1) + torch.arange(h, device=x.device).view(1, h)  # (B, H)
    cols = dx.view(b, 1) + torch.arange(w, device=x.device).view(1, w)  # (B, W)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    out = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def iterate_batches(
    ds: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x float (B, C, H, W) normalised, y int64 (B,))`` on ``device``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(ds)
    g = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for s in range(0, stop, batch_size):
        idx = order[s : s + batch_size]
        x = ds.images[idx].to(device, non_blocking=True)
        y = ds.labels[idx].to(device, non_blocking=True)
        xf = normalize(x, ds.mean, ds.std)
        if augment and ds.augment == "crop-flip":
            xf = crop_flip(xf, g)
        yield xf, y
