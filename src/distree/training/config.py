"""Typed, validated training configuration, saved next to every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

OBJECTIVES = {
    # name: (kd_weight, ft_weight)
    "ce": (0.0, 0.0),
    "ce+kd": (1.0, 0.0),
    "distree": (1.0, 1.0),
}


@dataclass
class TrainConfig:
    model: str = "small-cnn"
    num_nodes: int = 4
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (Nesterov) | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | onecycle | constant
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    objective: str = "distree"  # ce | ce+kd | distree
    ce_weights: list[float] | None = None  # default: 1.0 for every exit
    kd_weight: float | None = None  # default from the objective preset
    kd_temperature: float = 4.0
    ft_weight: float | None = None  # default from the objective preset
    ft_target: str = "next"  # next | last
    teacher: str | None = None  # external teacher checkpoint for KD
    head: dict[str, Any] | None = None  # exit-head spec (see distree.models.heads)
    model_args: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bf16 autocast on CUDA
    channels_last: bool = False
    max_steps_per_epoch: int | None = None  # for smoke runs
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}")
        kd, ft = OBJECTIVES[self.objective]
        if self.kd_weight is None:
            self.kd_weight = kd
        if self.ft_weight is None:
            self.ft_weight = ft
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 2 <= self.num_nodes <= 16 and self.num_nodes != 1:
            raise ValueError(f"num_nodes must be between 1 and 16, got {self.num_nodes}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'onecycle' or 'constant', got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ft_target not in ("next", "last"):
            raise ValueError(f"ft_target must be 'next' or 'last', got {self.ft_target!r}")
        if self.ce_weights is not None and len(self.ce_weights) != self.num_nodes:
            raise ValueError(f"ce_weights needs one weight per node ({self.num_nodes}), got {len(self.ce_weights)}")
        if min(self.kd_weight, self.ft_weight) < 0:
            raise ValueError("kd_weight and ft_weight must be >= 0")

    def exit_weights(self) -> list[float]:
        return list(self.ce_weights) if self.ce_weights is not None else [1.0] * self.num_nodes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**d)
