"""Multi-exit networks, their registry and their cost profiles."""

from . import small_cnn as _small_cnn  # noqa: F401  (registers models)
from . import wrn as _wrn  # noqa: F401
from .cost import CostProfile, count_flops
from .heads import AUTO_HEAD, DEFAULT_HEAD, DEFAULT_HEAD_BUDGET, FINAL_HEAD, ExitHead, build_head, size_head
from .multi_exit import ExitOutput, MultiExitNetwork, from_sequential
from .registry import (
    ENTRY_POINT_GROUP,
    ModelBuilder,
    ModelError,
    create_model,
    import_builder,
    list_models,
    parse_model_args,
    register_model,
    resolve_model,
)
from .split import partition_blocks

__all__ = [
    "AUTO_HEAD",
    "DEFAULT_HEAD",
    "DEFAULT_HEAD_BUDGET",
    "ENTRY_POINT_GROUP",
    "FINAL_HEAD",
    "CostProfile",
    "ExitHead",
    "ExitOutput",
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
