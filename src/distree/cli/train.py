"""``distree train``: joint training of a multi-exit network."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import typer
from rich.table import Table

from . import app
from ._common import console, guarded, progress_bar


@app.command()
def train(
    model: str = typer.Option(
        "small-cnn",
        help="A model name (see `distree models`: registered or from a 'distree.models' entry point) or a "
        "builder of your own as package.module:function.",
    ),
    model_args: list[str] = typer.Option(
        None,
        help="Builder arguments: a JSON object ('{\"width\": 0.5}') or KEY=VALUE pairs (width=0.5,depth=8); "
        "repeatable. `distree models` shows what each builder accepts.",
    ),
    nodes: int = typer.Option(4, help="Number of nodes (segments + exits)."),
    dataset: str = typer.Option("digits", help="cifar10 | mnist | fashion-mnist | imagefolder | digits | synthetic"),
    data_dir: str | None = typer.Option(None, help="Dataset folder (not needed for digits / synthetic)."),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1),
    optimizer: str = typer.Option("sgd", help="sgd (Nesterov) | adamw"),
    schedule: str = typer.Option("cosine", help="cosine | onecycle | constant"),
    weight_decay: float = typer.Option(5e-4),
    label_smoothing: float = typer.Option(0.0),
    objective: str = typer.Option("distree", help="ce | ce+kd | distree"),
    kd_weight: float | None = typer.Option(None, help="Override the preset's KD weight."),
    kd_temperature: float = typer.Option(4.0),
    ft_weight: float | None = typer.Option(None, help="Override the preset's feature-transfer weight."),
    teacher: str | None = typer.Option(None, help="External teacher checkpoint for KD."),
    head: str | None = typer.Option(
        None, help='Exit-head spec as JSON, e.g. \'{"kind":"pool","pool":4,"hidden":128}\''
    ),
    val_fraction: float = typer.Option(0.1, help="Fraction of the training set held out for calibration."),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    amp: bool = typer.Option(False, help="bf16 autocast (CUDA only)."),
    max_steps_per_epoch: int | None = typer.Option(None, hidden=True),
    out: Path = typer.Option(Path("runs/train"), help="Output directory (checkpoint, history, config)."),
    resume: bool = typer.Option(False, help="Resume from the state saved in --out."),
) -> None:
    """Train all segments and exits jointly (CE + KD from the deepest exit + feature transfer)."""
    from ..data import DatasetError
    from ..models import parse_model_args, resolve_model
    from ..training import TrainConfig
    from ..training import train as run_train

    head_spec = guarded(lambda: json.loads(head), json.JSONDecodeError) if head else None
    margs = guarded(lambda: parse_model_args(model_args))
    builder = guarded(lambda: resolve_model(model))
    guarded(lambda: builder.check_args(margs, complete=False))  # before loading data; the trainer checks the rest
    cfg = guarded(
        lambda: TrainConfig(
            model=model,
            model_args=margs,
            num_nodes=nodes,
            dataset=dataset,
            data_dir=data_dir,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            schedule=schedule,
            weight_decay=weight_decay,
            label_smoothing=label_smoothing,
            objective=objective,
            kd_weight=kd_weight,
            kd_temperature=kd_temperature,
            ft_weight=ft_weight,
            teacher=teacher,
            head=head_spec,
            val_fraction=val_fraction,
            seed=seed,
            device=device,
            amp=amp,
            channels_last=device.startswith("cuda"),
            max_steps_per_epoch=max_steps_per_epoch,
        )
    )
    with progress_bar() as p:
        task = p.add_task(f"epoch 1/{epochs}", total=None, info="")

        def on_step(epoch: int, step: int, steps: int, losses: dict[str, float]) -> None:
            per_exit = " ".join(f"{losses[k]:.2f}" for k in sorted(losses) if k.startswith("ce/"))
            p.update(
                task,
                description=f"epoch {epoch + 1}/{epochs}",
                total=steps,
                completed=step,
                info=f"loss {losses['loss']:.3f} | CE per exit {per_exit}",
            )

        def on_epoch(rec: dict) -> None:
            acc = " ".join(f"{a * 100:.1f}" for a in rec["val_acc"])
            p.console.print(f"epoch {rec['epoch']}: loss {rec['train']['loss']:.3f}  val acc % per exit: {acc}")

        result = guarded(lambda: run_train(cfg, out, resume=resume, on_step=on_step, on_epoch=on_epoch), DatasetError)
    _print_exit_table(result.model, result.history[-1]["val_acc"] if result.history else None)
    console.print(f"checkpoint: {out}")


def _print_exit_table(model, accs: list[float] | None, title: str = "per-exit validation accuracy and cost") -> None:
    cp = model.cost_profile()
    budget = getattr(model, "head_budget", None)
    if budget is not None:
        title += f" (exit-head budget: {100 * budget:g}% of its segment)"
    base = cp.last_exit_cost()
    cum = cp.exit_cost()
    t = Table(title=title)
    for c in ("exit", "acc %", "segment MFLOPs", "head MFLOPs", "head/seg %", "FLOPs to exit %", "bytes to next"):
        t.add_column(c, justify="right")
    for i in range(cp.num_nodes):
        t.add_row(
            str(i + 1),
            f"{accs[i] * 100:.2f}" if accs else "-",
            f"{cp.segment_flops[i] / 1e6:.3f}",
            f"{cp.exit_flops[i] / 1e6:.4f}",
            f"{100 * cp.exit_flops[i] / max(cp.segment_flops[i], 1):.2f}",
            f"{100 * cum[i] / base:.1f}",
            str(cp.hop_bytes[i]) if i < len(cp.hop_bytes) else "-",
        )
    console.print(t)
    shares = " / ".join(f"{100 * s:.2f}" for s in cp.head_share())
    specs = getattr(model, "head_specs", None) or []
    kinds = " / ".join(_head_label(s) for s in specs)
    console.print(f"exit heads cost {shares} % of their segments" + (f" ({kinds})" if kinds else ""))


def _head_label(spec: dict | None) -> str:
    if spec is None:
        return "custom"
    if spec.get("kind") == "linear":
        return "linear"
    hidden = spec.get("hidden")
    grid = f"{spec['pool']}x{spec['pool']}" if "pool" in spec else "flat"
    label = f"{spec.get('kind', 'pool')} {grid}" + (
        f" + {spec['channels']}-channel conv" if spec.get("channels") else ""
    )
    return label + (f" + MLP {hidden}" if hidden else "")


@app.command()
def models(
    pattern: str = typer.Argument("*", help="Glob pattern."),
    args: bool = typer.Option(False, "--args", help="Also show where each model comes from and its arguments."),
) -> None:
    """List the models: registered builders and those installed packages declare ('distree.models' entry points)."""
    from ..models import list_models, resolve_model

    for name in list_models(pattern):
        if not args:
            console.print(name)
            continue
        b = guarded(partial(resolve_model, name))
        console.print(f"{name}  ({b.origin}{', ' + b.ref if b.ref else ''})\n    {b.describe()}")
