"""distree: distributed early-exit DNN inference on chains of edge devices.

train → trace → calibrate → {evaluate offline, simulate, serve}

The names below are imported on first use, so that torch-free parts (the ONNX Runtime backend,
policies, traces) can be imported on a device without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "CostProfile": "models",
    "ExitOutput": "models",
    "MultiExitNetwork": "models",
    "create_model": "models",
    "from_sequential": "models",
    "list_models": "models",
    "register_model": "models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
