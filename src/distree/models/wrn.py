"""Wide residual networks (Zagoruyko & Komodakis, 2016), pre-activation, as ordered blocks.

WRN-d-k has ``n = (d - 4) / 6`` basic blocks in each of three groups of widths 16k, 32k, 64k.
The block list is [stem conv, block 1, ..., block 3n]; a split puts node boundaries between
blocks. The last exit is the network's own classifier (BN-ReLU, global pool, linear).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .heads import AUTO_HEAD, DEFAULT_HEAD_BUDGET, FINAL_HEAD
from .multi_exit import MultiExitNetwork, from_sequential
from .registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, H, W) -> (B, cout, H/s, W/s)
        o = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(torch.relu(self.bn2(o))))
        return o + skip


def wrn_blocks(depth: int, width: int, in_channels: int = 3, dropout: float = 0.0) -> list[nn.Module]:
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    blocks: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
    cin = widths[0]
    for g in range(3):
        for b in range(n):
            stride = 2 if (g > 0 and b == 0) else 1
            blocks.append(BasicBlock(cin, widths[g + 1], stride, dropout))
            cin = widths[g + 1]
    for m in blocks:
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return blocks


def build_wrn(
    depth: int,
    width: int,
    *,
    num_nodes: int = 4,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    dropout: float = 0.0,
    speeds: Sequence[float] | None = None,
    head: dict[str, Any] | None = None,
    balance: str = "flops",
    cut_points: Sequence[int] | None = None,
    head_budget: float | None = DEFAULT_HEAD_BUDGET,
) -> MultiExitNetwork:
    """``head``: exit-head spec for every exit but the last (default: sized to ``head_budget``)."""
    blocks = wrn_blocks(depth, width, in_channels, dropout)
    example = torch.zeros(2, in_channels, input_size, input_size)
    return from_sequential(
        blocks,
        num_nodes,
        example,
        num_classes=num_classes,
        balance=balance,
        speeds=speeds,
        head=head or AUTO_HEAD,
        final_head=FINAL_HEAD,
        cut_points=cut_points,
        head_budget=head_budget,
    )


def _make(depth: int, width: int):
    def builder(num_nodes: int = 4, **kwargs: Any) -> MultiExitNetwork:
        return build_wrn(depth, width, num_nodes=num_nodes, **kwargs)

    builder.__doc__ = f"WRN-{depth}-{width}, split into ``num_nodes`` nodes at block boundaries."
    sig = inspect.signature(build_wrn)  # declare build_wrn's keyword arguments (what the builder accepts)
    builder.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in sig.parameters.items() if n not in ("depth", "width")]
    )
    return builder


for _d, _k in [(10, 1), (16, 1), (16, 2), (16, 4), (16, 8), (22, 2), (28, 2), (28, 4), (28, 10), (40, 2)]:
    register_model(f"wrn-{_d}-{_k}")(_make(_d, _k))
