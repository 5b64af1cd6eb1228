"""Typed, validated training configuration, saved next to every checkpoint.

``TrainConfig`` is a schema (:mod:`distree._schema`): unknown keys, wrong types and values out of
range are a one-line :class:`~distree.errors.ConfigError` naming the key and the fix, whether
the config comes from the command line, from Python or from a saved ``train_config.json``.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .._schema import FORMAT_VERSION, LocatedError, Schema, format_error, read_json, require_table
from ..errors import ConfigError

OBJECTIVES = {
    # name: (kd_weight, ft_weight)
    "ce": (0.0, 0.0),
    "ce+kd": (1.0, 0.0),
    "distree": (1.0, 1.0),
}
CONFIG_FILE = "train_config.json"
# where a config being validated comes from (file, and section within it), for the error message
_SOURCE: ContextVar[tuple[str, tuple[str, ...]]] = ContextVar("training_config_source", default=("training config", ()))


class TrainConfig(Schema):
    """Everything a training run depends on. Mutable, like the dataclass it replaces; validated on creation."""

    model: str = "small-cnn"
    num_nodes: int = Field(4, ge=1, le=16)
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd (Nesterov) | adamw
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    objective: Literal["ce", "ce+kd", "distree"] = "distree"
    ce_weights: list[float] | None = None  # default: 1.0 for every exit
    kd_weight: float | None = Field(None, ge=0)  # default from the objective preset
    kd_temperature: float = Field(4.0, gt=0)
    ft_weight: float | None = Field(None, ge=0)  # default from the objective preset
    ft_target: Literal["next", "last"] = "next"
    teacher: str | None = None  # external teacher checkpoint for KD
    head: dict[str, Any] | None = None  # exit-head spec (see distree.models.heads)
    model_args: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bf16 autocast on CUDA
    channels_last: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1)  # for smoke runs
    eval_batch_size: int = Field(512, ge=1)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            source, loc = _SOURCE.get()
            raise ConfigError(format_error(e, source, type(self), loc_prefix=loc)) from None

    @field_validator("ce_weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(w < 0 for w in v):
            raise ValueError(f"must be >= 0 for every exit, got {v}")
        return v

    @model_validator(mode="after")
    def _presets(self) -> TrainConfig:
        kd, ft = OBJECTIVES[self.objective]
        if self.kd_weight is None:
            self.kd_weight = kd
        if self.ft_weight is None:
            self.ft_weight = ft
        if self.ce_weights is not None and len(self.ce_weights) != self.num_nodes:
            raise LocatedError(
                f"needs one weight per node ({self.num_nodes}), got {len(self.ce_weights)}", ("ce_weights",)
            )
        return self

    def exit_weights(self) -> list[float]:
        return list(self.ce_weights) if self.ce_weights is not None else [1.0] * self.num_nodes

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], source: str = "training config", section: tuple[str, ...] = ()
    ) -> TrainConfig:
        """A config from its dict (a saved ``train_config.json`` or a checkpoint's ``train_config``).

        ``source`` (the file) and ``section`` (the table within it) name it in error messages.
        """
        d = require_table(d, source=source, error=ConfigError, what="training config")
        version = d.get("format_version", FORMAT_VERSION)  # absent: written before the field existed
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ConfigError(
                f"{source}: 'format_version' is {version!r}, but this distree reads {FORMAT_VERSION}; "
                "upgrade distree or train again with this one"
            )
        token = _SOURCE.set((source, section))
        try:
            return cls(**{k: v for k, v in d.items() if k != "format_version"})
        finally:
            _SOURCE.reset(token)

    def save(self, path: str | Path) -> Path:
        """Write ``train_config.json`` (with ``format_version``)."""
        path = Path(path)
        path.write_text(json.dumps({"format_version": FORMAT_VERSION, **self.to_dict()}, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a saved ``train_config.json`` (one without ``format_version`` is version 1)."""
        d = read_json(path, error=ConfigError, what="training config", hint=f"train first; it writes {CONFIG_FILE}")
        return cls.from_dict(d, source=str(path))
