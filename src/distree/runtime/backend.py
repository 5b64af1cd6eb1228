"""The compute behind a node: what turns a batch of inputs into the successor's features and the exit's
logits and feature vectors. :class:`TorchBackend` runs segment K and exit head K of the checkpoint's
network; any object with the same ``run`` can stand in for it (another runtime, or a fake in tests).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """What computes a node's part of the network: features for the successor (None on the last
    node), the exit's logits (B, K) and its feature vectors (B, F), as numpy arrays."""

    def run(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]: ...


class TorchBackend:
    """Segment K and exit head K of a :class:`~distree.models.MultiExitNetwork`, in torch."""

    def __init__(self, segment: Any, exit_head: Any, *, last: bool) -> None:
        self.segment = segment.eval()
        self.exit_head = exit_head.eval()
        self.last = last

    def run(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        import torch

        if not x.flags.writeable:
            x = x.copy()
        with torch.inference_mode():
            h = self.segment(torch.from_numpy(x))
            logits, feats = self.exit_head(h)
            out_h = None if self.last else h.contiguous().numpy()
            return out_h, logits.float().numpy(), feats.float().numpy()
