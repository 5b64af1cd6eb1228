"""Exit heads: the small classifiers that let a node answer on its own.

An exit head costs compute on every request that reaches its node, so the default design
pools early (to a ``pool x pool`` grid) and then runs a small MLP. Every head returns
``(logits, features)``: ``features`` is the vector fed to the final linear layer. Policies
that compare representations between nodes (feature difference) use it, and so does the
feature-transfer term of the training objective.

Head specs are plain dicts (JSON-serialisable, stored in checkpoints)::

    {"kind": "pool", "pool": 1, "hidden": 128}   # BN-ReLU, pool to 1x1, Linear-ReLU, Linear
    {"kind": "conv", "pool": 8, "channels": 64, "hidden": 128}   # + a 3x3 conv at 8x8
    {"kind": "linear"}                           # BN-ReLU, global pool, Linear (classic WRN head)

The spec ``"auto"`` (:data:`AUTO_HEAD`, the default of ``from_sequential``) sizes each head to a
cost budget: the first head of the pooled family (grid 4x4, then 2x2, then 1x1; for each, an MLP
of 128, 64, 32 or 16 units; then a linear classifier) whose FLOPs are at most ``budget`` times the
FLOPs of the segment it follows (:data:`DEFAULT_HEAD_BUDGET`: 2%), see :func:`size_head`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .cost import count_flops

log = logging.getLogger(__name__)

HeadSpec = dict[str, Any]
HeadFactory = Callable[[int, int, int], nn.Module]  # (in_channels, spatial, num_classes) -> head

#: The largest head of the budgeted family, and the fixed head when no budget is set. Chosen by
#: measurement on CIFAR-10 (docs/training.md): pooled 4x4 grid + 128-unit MLP, 0.4-0.8% of a
#: WRN-16-2 segment's FLOPs.
DEFAULT_HEAD: HeadSpec = {"kind": "pool", "pool": 4, "hidden": 128}
#: The last exit: the backbone's own classifier.
FINAL_HEAD: HeadSpec = {"kind": "linear"}
#: Size every head to the budget (see :func:`size_head`).
AUTO_HEAD = "auto"
#: Default cost budget of an exit head: this fraction of the FLOPs of the segment it follows.
DEFAULT_HEAD_BUDGET = 0.02


class ExitHead(nn.Module):
    """BN-ReLU → (optional conv at pooled resolution) → adaptive pool → MLP → logits.

    Input ``h``: (B, C, H, W) activations (pre-activation residual stream) or (B, D) vectors.
    Output: ``(logits (B, K), features (B, F))``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pool: int = 1,
        hidden: int | None = 128,
        channels: int | None = None,
        spatial: int | None = None,
    ) -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"exit head pool must be >= 1, got {pool}")
        if spatial is not None:
            pool = min(pool, spatial)
        self.pool = pool
        self.norm = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU(inplace=False)
        self.conv: nn.Module | None = None
        width = in_channels
        if channels:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            width = channels
        flat = width if self.conv is not None else width * pool * pool
        self.mlp: nn.Module
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
            self.feature_dim = hidden
        else:
            self.mlp = nn.Identity()
            self.feature_dim = flat
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.act(self.norm(h))  # (B, C, H, W)
        x = nn.functional.adaptive_avg_pool2d(x, self.pool)  # (B, C, p, p)
        if self.conv is not None:
            x = self.conv(x)  # (B, ch, p, p)
            x = x.mean(dim=(2, 3))  # (B, ch)
        features = self.mlp(x.flatten(1))  # (B, F)
        return self.fc(features), features


class VectorHead(nn.Module):
    """Head for flat (B, D) activations (MLP backbones)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int | None = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.feature_dim = hidden or in_features
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.mlp(h.flatten(1))  # (B, F)
        return self.fc(features), features


def build_head(spec: HeadSpec | HeadFactory, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build one exit head for activations of shape ``in_shape`` (without batch dimension)."""
    if callable(spec):
        spatial = in_shape[-1] if len(in_shape) == 3 else 1
        head = spec(in_shape[0], spatial, num_classes)
        if not isinstance(head, nn.Module):
            raise TypeError("a custom exit-head factory must return an nn.Module")
        return head
    spec = dict(spec)
    kind = spec.pop("kind", "pool")
    if len(in_shape) == 1:
        return VectorHead(in_shape[0], num_classes, hidden=spec.get("hidden", 128))
    if len(in_shape) != 3:
        raise ValueError(f"exit heads need (C, H, W) or (D,) activations, got shape {in_shape}")
    c, h, _ = in_shape
    if kind == "linear":
        return ExitHead(c, num_classes, pool=1, hidden=None, spatial=h)
    if kind == "pool":
        return ExitHead(c, num_classes, pool=int(spec.get("pool", 1)), hidden=spec.get("hidden", 128), spatial=h)
    if kind == "conv":
        return ExitHead(
            c,
            num_classes,
            pool=int(spec.get("pool", 8)),
            hidden=spec.get("hidden", 128),
            channels=int(spec.get("channels", 64)),
            spatial=h,
        )
    raise ValueError(f"unknown exit-head kind {kind!r}; use 'pool', 'conv', 'linear' or pass a factory")


def head_candidates(in_shape: tuple[int, ...]) -> list[HeadSpec]:
    """The pooled head family for activations of ``in_shape``, in order of preference.

    The pooling grid first (4x4, 2x2, 1x1: spatial layout is what early exits need most, see
    docs/training.md), then the MLP width (128, 64, 32, 16), then a linear classifier.
    """
    if len(in_shape) == 1:
        return [{"kind": "pool", "hidden": h} for h in (128, 64, 32, 16)] + [{"kind": "pool", "hidden": None}]
    spatial = int(in_shape[1]) if len(in_shape) == 3 else 1
    pools = sorted({min(p, spatial) for p in (4, 2, 1)}, reverse=True)
    family: list[HeadSpec] = [{"kind": "pool", "pool": p, "hidden": h} for p in pools for h in (128, 64, 32, 16)]
    return family + [{"kind": "linear"}]


@torch.no_grad()
def head_flops(head: nn.Module, in_shape: tuple[int, ...]) -> int:
    """FLOPs of one head on one sample (FlopCounterMode, as in the cost profile)."""
    was = head.training
    head.eval()
    try:
        f, _ = count_flops(head, torch.zeros((1, *in_shape)))
    finally:
        head.train(was)
    return f


def size_head(
    in_shape: tuple[int, ...], num_classes: int, segment_flops: int, budget: float
) -> tuple[HeadSpec, nn.Module, int]:
    """The first head of :func:`head_candidates` costing at most ``budget * segment_flops`` FLOPs.

    Candidates are measured (FlopCounterMode, one sample), not estimated. When even the cheapest
    is over budget it is used, with a warning. Returns ``(spec, head, head FLOPs)``.
    """
    specs = head_candidates(in_shape)
    with torch.random.fork_rng(devices=[]):  # measuring must not shift the random init of the network
        costs = [head_flops(build_head(spec, in_shape, num_classes), in_shape) for spec in specs]
    limit = budget * segment_flops
    pick = next((i for i, c in enumerate(costs) if c <= limit), None)
    if pick is None:
        pick = min(range(len(specs)), key=lambda i: costs[i])
        log.warning(
            "the cheapest exit head (%s, %d FLOPs) costs %.1f%% of its segment (%d FLOPs), above the %.1f%% "
            "budget; put more work in this segment (fewer nodes or another split) or raise the head budget",
            specs[pick],
            costs[pick],
            100 * costs[pick] / max(segment_flops, 1),
            segment_flops,
            100 * budget,
        )
    return specs[pick], build_head(specs[pick], in_shape, num_classes), costs[pick]


def head_spec_from_weights(state: dict[str, torch.Tensor], in_shape: tuple[int, ...]) -> HeadSpec | None:
    """The spec of the head whose state dict (keys relative to the head) is ``state``, or None.

    For checkpoints that did not record their head specs: the pooled family is recognised from the
    shapes of its first linear layer (``pool`` from its input width, ``hidden`` from its output
    width). A conv head's grid cannot be read off its weights; it (and unknown heads) give None.
    """
    if any(k.startswith("conv.") for k in state):
        return None
    first = state.get("mlp.0.weight")  # (hidden, flat) when the head has an MLP
    fc = state.get("fc.weight")  # (classes, features)
    if fc is None or fc.ndim != 2:
        return None
    flat, hidden = (int(first.shape[1]), int(first.shape[0])) if first is not None else (int(fc.shape[1]), None)
    if len(in_shape) == 1:
        return {"kind": "pool", "hidden": hidden} if flat == in_shape[0] else None
    c = int(in_shape[0])
    pool = round((flat / c) ** 0.5) if c and flat % c == 0 else 0
    if pool < 1 or pool * pool * c != flat:
        return None
    if hidden is None and pool == 1:
        return {"kind": "linear"}
    return {"kind": "pool", "pool": pool, "hidden": hidden}
