"""``distree demo``: the main job end to end on the embedded digits data (no download)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, progress_bar
from .train import _print_exit_table


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output directory."),
    epochs: int = typer.Option(8),
    nodes: int = typer.Option(4),
) -> None:
    """Train a 4-node multi-exit CNN on sklearn's digits, then print per-exit test accuracy and cost."""
    from ..data import load_split
    from ..training import TrainConfig, evaluate_exits, train

    cfg = TrainConfig(model="small-cnn", num_nodes=nodes, dataset="digits", epochs=epochs, batch_size=64, lr=0.05,
                      objective="distree")
    console.rule("[bold]1. joint training (CE + KD + feature transfer) on digits")
    with progress_bar() as p:
        task = p.add_task("training", total=epochs, info="")

        def on_epoch(rec: dict) -> None:
            acc = " ".join(f"{a * 100:.1f}" for a in rec["val_acc"])
            p.update(task, advance=1, info=f"val acc % per exit: {acc}")

        res = train(cfg, out / "checkpoint", on_epoch=on_epoch)
    accs = evaluate_exits(res.model, load_split("digits", "test"))
    _print_exit_table(res.model, accs, title="per-exit TEST accuracy and cost (digits, 4 nodes)")
    console.print(f"checkpoint: {out / 'checkpoint'}")
