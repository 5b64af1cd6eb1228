"""``distree trace``: record every exit's outputs on a dataset split."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, guarded, progress_bar


@app.command("trace")
def trace_cmd(
    checkpoint: Path = typer.Option(..., help="Checkpoint directory (model.safetensors + model.json)."),
    split: str = typer.Option("val", help="val (for calibration) | test (for evaluation) | train"),
    out: Path = typer.Option(..., help="Output trace file (*.trace.safetensors)."),
    data_dir: str | None = typer.Option(None, help="Dataset folder (default: the one used for training)."),
    dataset: str | None = typer.Option(None, help="Override the checkpoint's dataset."),
    batch_size: int = typer.Option(256),
    device: str = typer.Option("cpu"),
    limit: int | None = typer.Option(None, help="Trace only the first N samples."),
    backend: str = typer.Option("torch", help="What computes the nodes: torch | onnx | onnx-int8."),
    onnx_dir: Path | None = typer.Option(None, help="Export folder for the onnx backends (`distree export`)."),
    providers: str = typer.Option("CPU", help="ONNX Runtime execution providers, in preference order."),
) -> None:
    """Run a checkpoint once over a split and store every exit's logits, features and the costs.

    With --backend onnx or onnx-int8 the exits are what ONNX Runtime computes from the export folder,
    so policies can be calibrated on what the devices compute."""
    from ..backends import BackendError
    from ..checkpoint import CheckpointError
    from ..data import DatasetError
    from ..trace import trace_checkpoint

    with progress_bar() as p:
        task = p.add_task(f"tracing {split}", total=None, info="")

        def on_batch(done: int, total: int) -> None:
            p.update(task, completed=done, total=total, info="samples")

        tr = guarded(
            lambda: trace_checkpoint(
                checkpoint,
                split,
                data_dir=data_dir,
                dataset=dataset,
                batch_size=batch_size,
                device=device,
                limit=limit,
                on_batch=on_batch,
                backend=backend,
                onnx_dir=onnx_dir,
                providers=[p.strip() for p in providers.split(",") if p.strip()],
            ),
            CheckpointError,
            DatasetError,
            BackendError,
        )
    tr.save(out)
    acc = " ".join(f"{a * 100:.2f}" for a in tr.exit_accuracy())
    console.print(f"{tr.num_samples} samples, {tr.num_nodes} exits ({tr.meta['backend']}); accuracy % per exit: {acc}")
    console.print(f"trace: {out}")
