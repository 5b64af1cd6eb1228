"""Multi-exit networks, their registry and their cost profiles."""

from . import small_cnn as _small_cnn  # noqa: F401  (registers models)
from . import wrn as _wrn  # noqa: F401
from .cost import CostProfile, count_flops
from .heads import DEFAULT_HEAD, FINAL_HEAD, ExitHead, build_head
from .multi_exit import ExitOutput, MultiExitNetwork, from_sequential
from .registry import create_model, list_models, register_model
from .split import partition_blocks

__all__ = [
    "DEFAULT_HEAD",
    "FINAL_HEAD",
    "CostProfile",
    "ExitHead",
    "ExitOutput",
    "MultiExitNetwork",
    "build_head",
    "count_flops",
    "create_model",
    "from_sequential",
    "list_models",
    "partition_blocks",
    "register_model",
]
