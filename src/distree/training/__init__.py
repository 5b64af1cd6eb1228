"""Offline joint training of every segment and exit (the DistrEE objective).

Owns the losses (CE + KD + feature transfer), the presets and the typed ``TrainConfig``, and the
trainer (checkpoint every epoch, resume, history, per-exit accuracy). May import
:mod:`distree.models`, :mod:`distree.data`, :mod:`distree.checkpoint` and torch; never imported by
the runtime, the simulator, calibration or evaluation.
"""

from .config import OBJECTIVES, TrainConfig
from .losses import cross_entropy_terms, distree_loss, feature_transfer_loss, kd_loss
from .trainer import TrainResult, build_model, exit_accuracies, make_projections, train

__all__ = [
    "OBJECTIVES",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "cross_entropy_terms",
    "distree_loss",
    "exit_accuracies",
    "feature_transfer_loss",
    "kd_loss",
    "make_projections",
    "train",
]
