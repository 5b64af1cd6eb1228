"""PyTorch backend: segment K + exit K of a :class:`~distree.models.MultiExitNetwork`, in eager mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import MultiExitNetwork
from .base import NodeOutput, check_input


class TorchBackend:
    """Node ``index`` (0-based) of ``model``, run by PyTorch on the CPU. See :class:`SegmentBackend`."""

    name = "torch"

    def __init__(self, model: MultiExitNetwork, index: int) -> None:
        if not 0 <= index < model.num_nodes:
            raise IndexError(f"node index {index} out of range for {model.num_nodes} nodes")
        self.index = int(index)
        self.num_nodes = model.num_nodes
        self.num_classes = int(model.num_classes)
        self.segment = model.segments[index].eval()
        self.exit_head = model.exits[index].eval()
        cost = model.cost_profile()
        self.in_shape = (
            tuple(int(s) for s in model.input_shape)
            if index == 0
            else tuple(int(s) for s in cost.hop_shapes[index - 1])
        )

    @property
    def is_last(self) -> bool:
        return self.index == self.num_nodes - 1

    def run(self, x: np.ndarray) -> NodeOutput:
        x = check_input(x, self.in_shape, f"node {self.index + 1} (torch)")
        if not x.flags.writeable:
            x = x.copy()
        with torch.inference_mode():
            h = self.segment(torch.from_numpy(x))
            logits, feats = self.exit_head(h)
            out_h = None if self.is_last else h.float().contiguous().numpy()
            return out_h, logits.float().numpy(), feats.float().numpy()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "torch": torch.__version__, "threads": torch.get_num_threads()}


def torch_backends(model: MultiExitNetwork) -> list[TorchBackend]:
    return [TorchBackend(model, i) for i in range(model.num_nodes)]


def torch_backends_from_checkpoint(checkpoint: str | Path) -> list[TorchBackend]:
    from ..checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    return torch_backends(model)
