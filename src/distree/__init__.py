"""distree: distributed early-exit DNN inference on chains of edge devices.

train → trace → calibrate → {evaluate offline, simulate, serve}
"""

__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from .models import (  # noqa: E402
    CostProfile,
    ExitOutput,
    MultiExitNetwork,
    create_model,
    from_sequential,
    list_models,
    register_model,
)

__all__ = [
    "CheckpointError",
    "CostProfile",
    "ExitOutput",
    "MultiExitNetwork",
    "__version__",
    "create_model",
    "from_sequential",
    "list_models",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
]
