"""The multi-exit network: N ordered backbone segments, each followed by an exit head.

Node ``i`` of a deployment runs ``segments[i]`` and ``exits[i]``. ``forward`` runs all of them
(training); ``forward_segment(i, h)`` runs one node (runtime).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from .cost import CostProfile, count_flops
from .heads import (
    AUTO_HEAD,
    DEFAULT_HEAD,
    DEFAULT_HEAD_BUDGET,
    FINAL_HEAD,
    HeadFactory,
    HeadSpec,
    build_head,
    head_flops,
    size_head,
)
from .split import partition_blocks

log = logging.getLogger(__name__)


class ExitOutput(NamedTuple):
    logits: torch.Tensor  # (B, K)
    features: torch.Tensor  # (B, F)


class MultiExitNetwork(nn.Module):
    """Ordered segments + exit heads. ``segments[i]`` feeds ``segments[i+1]``; ``exits[i]`` reads it."""

    def __init__(
        self,
        segments: Sequence[nn.Module],
        exits: Sequence[nn.Module],
        *,
        input_shape: Sequence[int],
        num_classes: int,
    ) -> None:
        super().__init__()
        if len(segments) != len(exits):
            raise ValueError(f"got {len(segments)} segments but {len(exits)} exit heads; need one head per segment")
        if not segments:
            raise ValueError("a multi-exit network needs at least one segment")
        self.segments = nn.ModuleList(segments)
        self.exits = nn.ModuleList(exits)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        # filled by create_model; used to rebuild from a checkpoint
        self.model_name: str | None = None
        self.model_args: dict[str, Any] = {}
        self.builder_ref: str | None = None  # import path of the builder (see models.registry)
        # filled by from_sequential: the spec of every head (None: a custom factory) and the budget
        self.head_specs: list[HeadSpec | None] = []
        self.head_budget: float | None = None
        self._cost: CostProfile | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.segments)

    def run_segment(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.segments[i](h)

    def exit(self, i: int, h: torch.Tensor) -> ExitOutput:
        logits, features = self.exits[i](h)
        return ExitOutput(logits, features)

    def forward_segment(self, i: int, h: torch.Tensor) -> tuple[torch.Tensor, ExitOutput]:
        """Node ``i``: returns (activations for node i+1, exit i's outputs)."""
        if not 0 <= i < self.num_nodes:
            raise IndexError(f"node index {i} out of range for {self.num_nodes} nodes")
        h = self.segments[i](h)
        return h, self.exit(i, h)

    def forward(self, x: torch.Tensor) -> list[ExitOutput]:
        """All exits, in node order: ``[ExitOutput(logits (B, K), features (B, F)), ...]``."""
        outs = []
        h = x
        for i in range(self.num_nodes):
            h, out = self.forward_segment(i, h)
            outs.append(out)
        return outs

    def feature_dims(self) -> list[int]:
        return [int(getattr(e, "feature_dim", 0)) for e in self.exits]

    @torch.no_grad()
    def cost_profile(self, refresh: bool = False) -> CostProfile:
        """FLOPs per segment and exit (batch 1, FlopCounterMode) and bytes per hop (float32)."""
        if self._cost is not None and not refresh:
            return self._cost
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            h = torch.zeros((1, *self.input_shape), dtype=p.dtype, device=p.device)
            seg, ex, hop, shapes = [], [], [], []
            input_bytes = h.numel() * 4
            for i in range(self.num_nodes):
                f, h = count_flops(self.segments[i], h)
                seg.append(f)
                f_exit, out = count_flops(self.exits[i], h)
                ex.append(f_exit)
                if i < self.num_nodes - 1:
                    hop.append(int(h.numel() * 4))
                    shapes.append(list(h.shape[1:]))
            self._cost = CostProfile(
                segment_flops=seg,
                exit_flops=ex,
                hop_bytes=hop,
                hop_shapes=shapes,
                input_bytes=int(input_bytes),
                output_bytes=int(out[0].shape[-1] * 4),
            )
        finally:
            self.train(was_training)
        return self._cost


def _check_block(i: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        y = block(x)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"block {i} ({type(block).__name__}) failed on input of shape {tuple(x.shape)}: {e}") from e
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"block {i} ({type(block).__name__}) must return one tensor, got {type(y).__name__}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"block {i} ({type(block).__name__}) changed the batch size from {x.shape[0]} to {y.shape[0]}; "
            "blocks must keep the batch dimension so samples can exit individually"
        )
    return y


def from_sequential(
    blocks: Sequence[nn.Module] | nn.Sequential,
    num_nodes: int,
    example_input: torch.Tensor,
    *,
    num_classes: int,
    balance: str = "flops",
    speeds: Sequence[float] | None = None,
    head: HeadSpec | HeadFactory | str = AUTO_HEAD,
    final_head: HeadSpec | HeadFactory | str = FINAL_HEAD,
    cut_points: Sequence[int] | None = None,
    head_budget: float | None = DEFAULT_HEAD_BUDGET,
) -> MultiExitNetwork:
    """Turn an ordered list of blocks into a multi-exit network split over ``num_nodes`` nodes.

    - ``example_input``: one example batch, shape (B, *input_shape), used to trace shapes and FLOPs.
    - ``balance="flops"``: equal FLOPs per node; ``speeds=[...]``: work proportional to relative
      device speeds; ``balance="blocks"``: equal block counts; ``cut_points``: explicit segment starts.
    - Exit heads are sized from each segment's output shape. ``head="auto"`` (default) picks, per
      exit, the largest pooled head costing at most ``head_budget`` (default 0.02) of the FLOPs of
      the segment it follows (:func:`~distree.models.heads.size_head`); ``head_budget=None`` uses
      :data:`DEFAULT_HEAD` everywhere. ``head`` / ``final_head`` may also be a spec dict or a factory
      ``(in_channels, spatial, num_classes) -> nn.Module`` returning ``(logits, features)``: those are
      used as given (a warning is logged when one exceeds the budget). ``final_head`` (default: the
      classic linear classifier) is the last exit's; ``"auto"`` sizes it too.
    """
    blocks = list(blocks)
    if not blocks:
        raise ValueError("from_sequential needs at least one block")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a batched tensor, shape (B, ...)")
    if balance not in ("flops", "blocks"):
        raise ValueError(f"balance must be 'flops' or 'blocks', got {balance!r}")
    if head_budget is not None and not (0.0 < float(head_budget) < float("inf")):
        raise ValueError(f"head_budget must be a positive fraction of a segment's FLOPs (e.g. 0.02), got {head_budget}")
    for what, h in (("head", head), ("final_head", final_head)):
        if isinstance(h, str) and h != AUTO_HEAD:
            raise ValueError(f"{what} must be {AUTO_HEAD!r}, a head spec dict or a factory, got {h!r}")
    x = example_input[:1]
    xb = example_input[:2]
    costs, shapes = [], []
    modes = [b.training for b in blocks]
    for b in blocks:
        b.eval()
    with torch.no_grad():
        for i, b in enumerate(blocks):
            xb = _check_block(i, b, xb)
            f, x = count_flops(b, x)
            costs.append(max(f, 1))
            shapes.append(tuple(x.shape[1:]))
    for b, m in zip(blocks, modes, strict=True):
        b.train(m)
    if cut_points is not None:
        starts = list(cut_points)
        if len(starts) != num_nodes or starts[0] != 0 or sorted(set(starts)) != starts or starts[-1] >= len(blocks):
            raise ValueError(
                f"cut_points {starts} must be {num_nodes} strictly increasing block indices starting at 0 "
                f"and below {len(blocks)}"
            )
    elif balance == "blocks" and speeds is None:
        starts = partition_blocks([1.0] * len(blocks), num_nodes)
    else:
        starts = partition_blocks(costs, num_nodes, speeds)
    ends = starts[1:] + [len(blocks)]
    segments: list[nn.Module] = []
    exits: list[nn.Module] = []
    specs: list[HeadSpec | None] = []
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        segments.append(nn.Sequential(*blocks[s:e]))
        spec = final_head if k == num_nodes - 1 else head
        seg_flops = int(sum(costs[s:e]))
        if isinstance(spec, str):  # "auto"
            if head_budget is None:
                spec = DEFAULT_HEAD
            else:
                spec, module, _ = size_head(shapes[e - 1], num_classes, seg_flops, float(head_budget))
                exits.append(module)
                specs.append(dict(spec))
                continue
        module = build_head(spec, shapes[e - 1], num_classes)
        if head_budget is not None and k < num_nodes - 1:
            share = head_flops(module, shapes[e - 1]) / max(seg_flops, 1)
            if share > head_budget:
                log.warning(
                    "exit head %d (%s) costs %.1f%% of its segment, above the %.1f%% head budget",
                    k + 1,
                    "custom factory" if callable(spec) else spec,
                    100 * share,
                    100 * head_budget,
                )
        exits.append(module)
        specs.append(None if callable(spec) else dict(spec))
    net = MultiExitNetwork(segments, exits, input_shape=example_input.shape[1:], num_classes=num_classes)
    net.head_specs = specs
    net.head_budget = None if head_budget is None else float(head_budget)
    log.debug("split %d blocks into segments starting at %s; heads %s", len(blocks), starts, specs)
    return net
