"""A small plain CNN (6 conv blocks) for tests and the embedded digits demo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .heads import AUTO_HEAD, DEFAULT_HEAD_BUDGET
from .multi_exit import MultiExitNetwork, from_sequential
from .registry import register_model


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


@register_model("small-cnn")
def small_cnn(
    num_nodes: int = 4,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 8,
    width: int = 16,
    speeds: Sequence[float] | None = None,
    head: dict[str, Any] | None = None,
    balance: str = "blocks",
    cut_points: Sequence[int] | None = None,
    head_budget: float | None = DEFAULT_HEAD_BUDGET,
) -> MultiExitNetwork:
    """Six 3x3 conv blocks (widths w, w, 2w, 2w, 4w, 4w; stride 2 at blocks 3 and 5).

    Every exit, the last included, gets a pooled head sized to ``head_budget`` unless ``head`` is given.
    """
    w = width
    blocks = [
        conv_block(in_channels, w),
        conv_block(w, w),
        conv_block(w, 2 * w, 2),
        conv_block(2 * w, 2 * w),
        conv_block(2 * w, 4 * w, 2),
        conv_block(4 * w, 4 * w),
    ]
    example = torch.zeros(2, in_channels, input_size, input_size)
    return from_sequential(
        blocks,
        num_nodes,
        example,
        num_classes=num_classes,
        balance=balance,
        speeds=speeds,
        head=head or AUTO_HEAD,
        final_head=head or AUTO_HEAD,
        cut_points=cut_points,
        head_budget=head_budget,
    )
