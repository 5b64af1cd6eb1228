"""Multi-exit networks, their registry and their cost profiles.

Owns :class:`MultiExitNetwork` (segments + exit heads), exit heads, the model registry, splitting a
backbone into segments, and the cost profile (FLOPs per segment and head, bytes per hop). May import
torch and numpy, never another ``distree`` package. Names resolve on first use: importing
:mod:`distree.models.cost` (the numpy-only :class:`CostProfile`, which traces, the simulator and
calibration need) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "CostProfile": "cost",
    "count_flops": "cost",
    "AUTO_HEAD": "heads",
    "DEFAULT_HEAD": "heads",
    "DEFAULT_HEAD_BUDGET": "heads",
    "size_head": "heads",
    "FINAL_HEAD": "heads",
    "ExitHead": "heads",
    "build_head": "heads",
    "ExitOutput": "multi_exit",
    "MultiExitNetwork": "multi_exit",
    "from_sequential": "multi_exit",
    "ENTRY_POINT_GROUP": "registry",
    "ModelBuilder": "registry",
    "ModelError": "registry",
    "import_builder": "registry",
    "parse_model_args": "registry",
    "resolve_model": "registry",
    "create_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "partition_blocks": "split",
}

__all__ = [
    "AUTO_HEAD",
    "CostProfile",
    "DEFAULT_HEAD",
    "DEFAULT_HEAD_BUDGET",
    "ENTRY_POINT_GROUP",
    "ExitHead",
    "ExitOutput",
    "FINAL_HEAD",
    "ModelBuilder",
    "ModelError",
    "MultiExitNetwork",
    "build_head",
    "count_flops",
    "create_model",
    "from_sequential",
    "import_builder",
    "list_models",
    "parse_model_args",
    "partition_blocks",
    "register_model",
    "resolve_model",
    "size_head",
]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .cost import CostProfile, count_flops
    from .heads import DEFAULT_HEAD, FINAL_HEAD, ExitHead, build_head
    from .multi_exit import ExitOutput, MultiExitNetwork, from_sequential
    from .registry import create_model, list_models, register_model
    from .split import partition_blocks
