"""The DistrEE training objective as pure functions: tensors in, tensors out.

total = sum_i w_i * CE(logits_i, y)
      + kd_weight * sum_{i < N-1} T^2 * KL(softmax(teacher / T) || softmax(logits_i / T))
      + ft_weight * sum_{i < N-1} || normalize(proj_i(f_i)) - normalize(stopgrad(f_target(i))) ||^2 / 2

The teacher of knowledge distillation (KD) is the deepest exit (or an external model); the
feature-transfer (FT) target of exit i is the next node's exit features (or the last node's).
Teacher sides never receive gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cross_entropy_terms(
    logits: Sequence[torch.Tensor], target: torch.Tensor, weights: Sequence[float], label_smoothing: float = 0.0
) -> torch.Tensor:
    """Weighted sum over exits of cross-entropy. ``logits[i]``: (B, K); ``target``: (B,)."""
    if len(weights) != len(logits):
        raise ValueError(f"{len(weights)} CE weights for {len(logits)} exits")
    total = logits[0].new_zeros(())
    for w, lg in zip(weights, logits, strict=True):
        if w:
            total = total + w * F.cross_entropy(lg.float(), target, label_smoothing=label_smoothing)
    return total


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch-mean; the teacher is detached."""
    if temperature <= 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=-1)  # (B, K)
    log_p_t = F.log_softmax(teacher.detach().float() / t, dim=-1)  # (B, K)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def feature_transfer_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Half squared distance between L2-normalised vectors (= 1 - cosine), batch-mean; teacher detached."""
    s = F.normalize(student.float(), dim=-1)  # (B, F)
    t = F.normalize(teacher.detach().float(), dim=-1)  # (B, F)
    return 0.5 * (s - t).pow(2).sum(dim=-1).mean()


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)`` of a non-empty list, typed as the tensor it is."""
    return sum(terms[1:], terms[0])


def distree_loss(
    logits: Sequence[torch.Tensor],
    features: Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    ce_weights: Sequence[float],
    kd_weight: float = 0.0,
    temperature: float = 4.0,
    ft_weight: float = 0.0,
    projections: Sequence[torch.nn.Module] | torch.nn.ModuleList | None = None,
    ft_target: str = "next",
    label_smoothing: float = 0.0,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The full objective. Returns ``(total, {"ce": .., "kd": .., "ft": .., "ce/<i>": ..})``."""
    n = len(logits)
    parts: dict[str, torch.Tensor] = {}
    ce = cross_entropy_terms(logits, target, ce_weights, label_smoothing)
    parts["ce"] = ce
    total = ce
    if kd_weight and n > 1:
        teacher = logits[-1] if teacher_logits is None else teacher_logits
        kd = _total([kd_loss(logits[i], teacher, temperature) for i in range(n - 1)])
        parts["kd"] = kd
        total = total + kd_weight * kd
    if ft_weight and n > 1:
        if projections is None or len(projections) != n - 1:
            raise ValueError("feature transfer needs one projection head per exit except the last")
        if ft_target not in ("next", "last"):
            raise ValueError(f"ft_target must be 'next' or 'last', got {ft_target!r}")
        ft = _total(
            [
                feature_transfer_loss(projections[i](features[i]), features[i + 1 if ft_target == "next" else n - 1])
                for i in range(n - 1)
            ]
        )
        parts["ft"] = ft
        total = total + ft_weight * ft
    with torch.no_grad():
        for i, lg in enumerate(logits):
            parts[f"ce/{i}"] = F.cross_entropy(lg.float(), target)
    return total, parts
