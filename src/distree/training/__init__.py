"""Offline joint training (never imported by the runtime or the simulator)."""

from .config import OBJECTIVES, TrainConfig
from .losses import cross_entropy_terms, distree_loss, feature_transfer_loss, kd_loss
from .trainer import TrainResult, build_model, evaluate_exits, make_projections, train

__all__ = [
    "OBJECTIVES",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "cross_entropy_terms",
    "distree_loss",
    "evaluate_exits",
    "feature_transfer_loss",
    "kd_loss",
    "make_projections",
    "train",
]
