"""distree: distributed early-exit DNN inference on chains of edge devices.

train → trace → calibrate → {evaluate offline, simulate, serve}

The names in ``__all__`` are the public API; each resolves on first use, so ``import distree``
(and ``import distree.policies``, ``distree.sim``, ``distree.calibration``) imports no torch until a
model, checkpoint, dataset or training name is used. Subpackages own one step each; see their
docstrings and docs/architecture.md for what each may import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → the subpackage that defines it
_EXPORTS: dict[str, str] = {
    # models (torch)
    "CostProfile": "models",
    "ExitOutput": "models",
    "MultiExitNetwork": "models",
    "create_model": "models",
    "from_sequential": "models",
    "list_models": "models",
    "register_model": "models",
    # checkpoints, data, training (torch)
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_split": "data",
    "TrainConfig": "training",
    "train": "training",
    # traces (the format is numpy only; recording needs torch)
    "Trace": "trace",
    "load_trace": "trace",
    "trace_checkpoint": "trace",
    # exit policies, calibration, evaluation (numpy / scipy)
    "ExitPolicy": "policies",
    "create_default_policy": "policies",
    "create_policy": "policies",
    "exit_nodes": "policies",
    "list_policies": "policies",
    "load_policy": "policies",
    "register_policy": "policies",
    "calibrate": "calibration",
    "build_report": "evaluation",
    "evaluate_policy": "evaluation",
    "write_report": "evaluation",
    # simulator (numpy / simpy)
    "SimResult": "sim",
    "load_scenario": "sim",
    "simulate": "sim",
    # runtime (grpc)
    "ClusterClient": "runtime",
    "LocalCluster": "runtime",
    "load_spec": "runtime",
}

_SUBPACKAGES = (
    "backends",
    "calibration",
    "checkpoint",
    "cli",
    "data",
    "evaluation",
    "fluctuation",
    "models",
    "netem",
    "policies",
    "runtime",
    "sim",
    "trace",
    "training",
)

__all__ = [
    "__version__",
    "CheckpointError",
    "ClusterClient",
    "CostProfile",
    "ExitOutput",
    "ExitPolicy",
    "LocalCluster",
    "MultiExitNetwork",
    "SimResult",
    "Trace",
    "TrainConfig",
    "build_report",
    "calibrate",
    "create_default_policy",
    "create_model",
    "create_policy",
    "evaluate_policy",
    "exit_nodes",
    "from_sequential",
    "list_models",
    "list_policies",
    "load_checkpoint",
    "load_policy",
    "load_scenario",
    "load_spec",
    "load_split",
    "load_trace",
    "register_model",
    "register_policy",
    "save_checkpoint",
    "simulate",
    "trace_checkpoint",
    "train",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))


if TYPE_CHECKING:
    from .calibration import calibrate
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .data import load_split
    from .evaluation import build_report, evaluate_policy, write_report
    from .models import (
        CostProfile,
        ExitOutput,
        MultiExitNetwork,
        create_model,
        from_sequential,
        list_models,
        register_model,
    )
    from .policies import (
        ExitPolicy,
        create_default_policy,
        create_policy,
        exit_nodes,
        list_policies,
        load_policy,
        register_policy,
    )
    from .runtime import ClusterClient, LocalCluster, load_spec
    from .sim import SimResult, load_scenario, simulate
    from .trace import Trace, load_trace, trace_checkpoint
    from .training import TrainConfig, train
