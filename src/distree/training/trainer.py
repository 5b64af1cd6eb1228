"""Joint training of all segments and exits with the DistrEE objective.

Seeded and deterministic on CPU; checkpoints every epoch (weights + sidecar + resumable state);
per-exit validation accuracy every epoch; a JSON history. Progress goes to an ``on_step`` /
``on_epoch`` callback (the CLI draws a rich progress bar), logs to ``logging``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import ImageDataset, iterate_batches, load_split
from ..models import ModelError, MultiExitNetwork, resolve_model
from .config import CONFIG_FILE, TrainConfig
from .losses import distree_loss

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, int, dict[str, float]], None]  # epoch, step, steps, losses
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    model: MultiExitNetwork
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None


def build_model(cfg: TrainConfig, ds: ImageDataset) -> MultiExitNetwork:
    """Build ``cfg.model`` for dataset ``ds``: the dataset's ``num_classes`` / ``in_channels`` /
    ``input_size`` go only to builders that take them (``cfg.model_args`` override them), and a
    network built for another input shape or class count is a :class:`ModelError` saying the fix."""
    builder = resolve_model(cfg.model)
    c, h, _ = ds.input_shape
    offered = {"num_classes": ds.num_classes, "in_channels": c, "input_size": h}
    kwargs: dict[str, Any] = {k: v for k, v in offered.items() if builder.accepts(k)}
    if cfg.head is not None:
        if not builder.accepts("head"):
            raise ModelError(
                f"model {cfg.model!r} takes no 'head' argument, so an exit-head spec cannot be passed to it; "
                f"it accepts: {builder.describe()}"
            )
        kwargs["head"] = cfg.head
    kwargs.update(cfg.model_args)
    model = builder.build(cfg.num_nodes, **kwargs)
    if tuple(model.input_shape) != tuple(ds.input_shape):
        missing = [k for k in ("in_channels", "input_size") if not builder.accepts(k)]
        fix = (
            f"give the builder {' and '.join(repr(k) for k in missing)} parameters so it adapts to the data, or "
            if missing
            else ""
        )
        raise ModelError(
            f"model {cfg.model!r} is built for inputs of shape {tuple(model.input_shape)} but dataset "
            f"{cfg.dataset!r} has {tuple(ds.input_shape)}; {fix}train it on data of that shape"
        )
    if model.num_classes != ds.num_classes:
        fix = "" if builder.accepts("num_classes") else "give the builder a 'num_classes' parameter, or "
        raise ModelError(
            f"model {cfg.model!r} has {model.num_classes} classes but dataset {cfg.dataset!r} has "
            f"{ds.num_classes}; {fix}train it on data with {model.num_classes} classes"
        )
    return model


def make_projections(model: MultiExitNetwork, ft_target: str) -> nn.ModuleList:
    """Training-only projection heads mapping exit i's features onto its FT target's feature space."""
    dims = model.feature_dims()
    n = model.num_nodes
    return nn.ModuleList(nn.Linear(dims[i], dims[i + 1] if ft_target == "next" else dims[n - 1]) for i in range(n - 1))


@torch.no_grad()
def exit_accuracies(
    model: MultiExitNetwork,
    ds: ImageDataset,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> list[float]:
    """Accuracy of every exit on ``ds`` (no augmentation)."""
    model.eval()
    correct = torch.zeros(model.num_nodes, dtype=torch.long)
    for x, y in iterate_batches(ds, batch_size, device=device):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and torch.device(device).type == "cuda"):
            outs = model(x)
        for i, o in enumerate(outs):
            correct[i] += (o.logits.argmax(-1) == y).sum().cpu()
    return (correct.double() / max(len(ds), 1)).tolist()


def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    warm = int(cfg.warmup_epochs * total / cfg.epochs)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        t = (step - warm) / max(total - warm, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    train_ds: ImageDataset | None = None,
    val_ds: ImageDataset | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.dataset``; checkpoint into ``out_dir`` every epoch."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    train_ds = train_ds or load_split(cfg.dataset, "train", cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed)
    val_ds = val_ds or load_split(cfg.dataset, "val", cfg.data_dir, val_fraction=cfg.val_fraction, seed=cfg.seed)
    model = build_model(cfg, train_ds)
    model.cost_profile()  # measured on CPU before moving
    projections = make_projections(model, cfg.ft_target)
    model.to(device)
    projections.to(device)
    if cfg.channels_last and device.type == "cuda":
        # Module.to takes memory_format (as Tensor.to does); torch's type overloads of it leave it out
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    teacher: MultiExitNetwork | None = None
    if cfg.teacher and cfg.kd_weight:
        teacher, _ = load_checkpoint(cfg.teacher, map_location=str(device))
        teacher.eval().requires_grad_(False)
    params = list(model.parameters()) + (list(projections.parameters()) if cfg.ft_weight else [])
    opt = _make_optimizer(cfg, params)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    if len(train_ds) >= cfg.batch_size:
        steps_per_epoch = len(train_ds) // cfg.batch_size  # drop_last
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    sched = _make_schedule(cfg, opt, steps_per_epoch * cfg.epochs)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / CONFIG_FILE)
        state_path = out / "train_state.pt"
        if resume and state_path.is_file():
            st = torch.load(state_path, map_location=device, weights_only=False)
            if st["config"] != cfg.to_dict():
                raise ValueError(f"cannot resume from {out}: its training config differs from this one")
            model.load_state_dict(st["model"])
            projections.load_state_dict(st["projections"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            torch.set_rng_state(st["rng"])
            history = st["history"]
            start_epoch = st["epoch"] + 1
            log.info("resumed from %s at epoch %d", out, start_epoch)
    weights = cfg.exit_weights()
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(start_epoch):  # keep the data order identical to an uninterrupted run
        torch.randperm(len(train_ds), generator=gen)
    use_amp = cfg.amp and device.type == "cuda"
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        projections.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        seen = 0
        batches = iterate_batches(
            train_ds, cfg.batch_size, shuffle=True, augment=True, generator=gen, device=device, drop_last=True
        )
        for step, (x, y) in enumerate(batches):
            if step >= steps_per_epoch:
                break
            if cfg.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                outs = model(x)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)[-1].logits
                loss, parts = distree_loss(
                    [o.logits for o in outs],
                    [o.features for o in outs],
                    y,
                    ce_weights=weights,
                    kd_weight=cfg.kd_weight or 0.0,
                    temperature=cfg.kd_temperature,
                    ft_weight=cfg.ft_weight or 0.0,
                    projections=projections,
                    ft_target=cfg.ft_target,
                    label_smoothing=cfg.label_smoothing,
                    teacher_logits=teacher_logits,
                )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch} step {step}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = int(y.shape[0])
            seen += b
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
            if on_step is not None:
                on_step(epoch, step + 1, steps_per_epoch, {k: v / seen for k, v in sums.items()})
        train_time = time.perf_counter() - t0
        val_acc = exit_accuracies(model, val_ds, cfg.eval_batch_size, device, use_amp)
        train_avg = {k: v / max(seen, 1) for k, v in sums.items()}
        rec = {
            "epoch": epoch + 1,
            "lr": sched.get_last_lr()[0],
            "train": train_avg,
            "val_acc": val_acc,
            "images_per_s": seen / max(train_time, 1e-9),
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        log.info(
            "epoch %d/%d loss %.4f val acc per exit %s",
            epoch + 1,
            cfg.epochs,
            train_avg["loss"],
            " ".join(f"{a:.3f}" for a in val_acc),
        )
        if out is not None:
            model_cpu_state = {k: v for k, v in model.state_dict().items()}
            save_checkpoint(
                model,
                out,
                classes=train_ds.classes,
                normalization=train_ds.normalization(),
                train_config=cfg.to_dict(),
                extra={"epoch": epoch + 1, "val_acc": val_acc, "dataset": cfg.dataset},
            )
            tmp = out / "train_state.pt.tmp"
            torch.save(
                {
                    "config": cfg.to_dict(),
                    "model": model_cpu_state,
                    "projections": projections.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": history,
                    "epoch": epoch,
                },
                tmp,
            )
            tmp.replace(out / "train_state.pt")
            (out / "history.json").write_text(json.dumps(history, indent=2))
        if on_epoch is not None:
            on_epoch(rec)
    model.eval()
    return TrainResult(model=model, history=history, out_dir=out)
