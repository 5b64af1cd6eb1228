"""Cost profile of a multi-exit network: FLOPs per segment and per exit, bytes per hop.

FLOPs are measured with :class:`torch.utils.flop_counter.FlopCounterMode` on one sample
(batch 1), so they follow whatever the modules really execute. Bytes are the size of the
tensor node ``i`` sends to node ``i + 1`` (one sample, float32 unless told otherwise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from .._schema import Schema


@dataclass(frozen=True)
class CostProfile:
    """Per-sample costs. Lists are indexed by node (0-based)."""

    segment_flops: list[_Count]
    exit_flops: list[_Count]
    hop_bytes: list[_Count]  # len N-1: bytes node i sends to node i+1
    hop_shapes: list[list[int]] = field(default_factory=list)  # per hop, without batch dim
    input_bytes: int = 0  # bytes of one input sample (client -> node 1)
    output_bytes: int = 0  # bytes of one answer (class probabilities)

    def __post_init__(self) -> None:
        n = len(self.segment_flops)
        if n < 1:
            raise ValueError("a cost profile needs at least one segment")
        if len(self.exit_flops) != n:
            raise ValueError(f"exit_flops has {len(self.exit_flops)} entries for {n} segments")
        if len(self.hop_bytes) != n - 1:
            raise ValueError(f"hop_bytes must have num_nodes-1={n - 1} entries, got {len(self.hop_bytes)}")

    @property
    def num_nodes(self) -> int:
        return len(self.segment_flops)

    def exit_cost(self) -> np.ndarray:
        """FLOPs a request pays when it exits at node i: segments 0..i and heads 0..i. Shape (N,)."""
        return np.cumsum(np.asarray(self.segment_flops, dtype=np.float64)) + np.cumsum(
            np.asarray(self.exit_flops, dtype=np.float64)
        )

    def last_exit_cost(self) -> float:
        """The baseline: every segment and only the final head."""
        return float(sum(self.segment_flops) + self.exit_flops[-1])

    def head_share(self) -> list[float]:
        """Each exit head's FLOPs as a fraction of the FLOPs of the segment it follows, per node."""
        return [e / max(s, 1) for s, e in zip(self.segment_flops, self.exit_flops, strict=True)]

    def bytes_to_exit(self) -> np.ndarray:
        """Bytes sent between nodes when a request exits at node i. Shape (N,)."""
        return np.concatenate([[0.0], np.cumsum(np.asarray(self.hop_bytes, dtype=np.float64))])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostProfile:
        return cls(
            segment_flops=[int(x) for x in d["segment_flops"]],
            exit_flops=[int(x) for x in d["exit_flops"]],
            hop_bytes=[int(x) for x in d["hop_bytes"]],
            hop_shapes=[list(s) for s in d.get("hop_shapes", [])],
            input_bytes=int(d.get("input_bytes", 0)),
            output_bytes=int(d.get("output_bytes", 0)),
        )


_Count = Annotated[int, Field(ge=0)]


class CostProfileTable(Schema):
    """The ``cost_profile`` table of a trace header or checkpoint sidecar."""

    segment_flops: list[_Count] = Field(min_length=1, description="FLOPs of each segment")
    exit_flops: list[_Count] = Field(min_length=1, description="FLOPs of each exit head")
    hop_bytes: list[_Count] = Field(description="bytes node i sends to node i+1 (num_nodes - 1 entries)")
    hop_shapes: list[list[int]] = Field(default_factory=list)
    input_bytes: int = Field(0, ge=0)
    output_bytes: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> CostProfileTable:
        n = len(self.segment_flops)
        if len(self.exit_flops) != n:
            raise ValueError(f"'exit_flops' has {len(self.exit_flops)} entries for {n} segments: one per node")
        if len(self.hop_bytes) != n - 1:
            raise ValueError(f"'hop_bytes' must have num_nodes-1={n - 1} entries, got {len(self.hop_bytes)}")
        return self

    def build(self) -> CostProfile:
        return CostProfile(**self.model_dump())


def count_flops(fn: Any, *args: Any) -> tuple[int, Any]:
    """Run ``fn(*args)`` under FlopCounterMode; return (total FLOPs, result)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out
