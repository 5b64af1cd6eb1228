"""``distree export``: one ONNX file per node (segment K + exit K), optionally int8, with a manifest."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, fail, guarded, progress_bar


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., help="Checkpoint directory (model.safetensors + model.json)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Path = typer.Option(..., help="Output folder: node<K>.onnx per node + manifest.json."),
    quantize: str | None = typer.Option(None, help="int8: also write node<K>.int8.onnx (static quantization)."),
    quant_format: str = typer.Option("qdq", help="int8 graph form: qdq | qoperator."),
    calibration_samples: int = typer.Option(512, help="Training samples to calibrate the int8 ranges on."),
    calibration_method: str = typer.Option("minmax", help="minmax | entropy | percentile."),
    per_channel: bool = typer.Option(True, help="Per-channel int8 weights."),
    activation_type: str = typer.Option("uint8", help="int8 activations: uint8 (x86/ARM CPUs) | int8 (TensorRT)."),
    opset: int = typer.Option(18, help="ONNX opset."),
    exporter: str = typer.Option("dynamo", help="torch exporter: dynamo (torch.export) | torchscript (faster)."),
    parity_split: str = typer.Option("test", help="Split to compare ONNX with torch on."),
    parity_limit: int | None = typer.Option(None, help="Compare on the first N samples only."),
    atol: float = typer.Option(1e-3, help="Largest |logit difference| ONNX fp32 vs torch that passes."),
    data_dir: str | None = typer.Option(None, help="Dataset folder (default: the one used for training)."),
    dataset: str | None = typer.Option(None, help="Override the checkpoint's dataset."),
    seed: int = typer.Option(0, help="Seed for picking calibration samples."),
) -> None:
    """Export a checkpoint to ONNX per node, check parity with torch on a test split, optionally quantize to int8."""
    from ..backends import BackendError
    from ..backends.export import export_checkpoint
    from ..checkpoint import CheckpointError
    from ..data import DatasetError

    if quantize is not None and quantize.lower() in ("none", ""):
        quantize = None
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        fail(f"export needs the onnx extra ({e.name} is missing): pip install 'distree[onnx]'")
    with progress_bar(transient=True) as p:
        task = p.add_task("export", total=None, info="")
        m = guarded(
            lambda: export_checkpoint(
                checkpoint,
                out,
                fmt=fmt,
                quantize=quantize,
                opset=opset,
                exporter=exporter,
                data_dir=data_dir,
                dataset=dataset,
                parity_split=parity_split,
                parity_limit=parity_limit,
                atol=atol,
                calibration_samples=calibration_samples,
                quant_format=quant_format,
                calibration_method=calibration_method,
                per_channel=per_channel,
                activation_type=activation_type,
                seed=seed,
                progress=lambda msg: p.update(task, description=msg),
            ),
            BackendError,
            CheckpointError,
            DatasetError,
        )
    par = m.parity
    console.print(
        f"exported {m.num_nodes} nodes to {out} (opset {m.opset}, {m.versions.get('exporter')} exporter); "
        f"parity with torch on {par['samples']} {par['split']} samples:"
    )
    q = m.int8 if "accuracy_int8" in m.int8 else None
    head = "| exit | torch acc % | onnx fp32 acc % | max abs dlogit | argmax agreement % |"
    rule = "|---|---|---|---|---|"
    if q:
        head += " int8 acc % | int8 vs fp32 agreement % |"
        rule += "---|---|"
    console.print(head, soft_wrap=True)
    console.print(rule)
    for i in range(m.num_nodes):
        row = (
            f"| {i + 1} | {par['accuracy_reference'][i] * 100:.2f} | {par['accuracy'][i] * 100:.2f} | "
            f"{par['max_abs_logit_diff'][i]:.2e} | {par['argmax_agreement'][i] * 100:.2f} |"
        )
        if q:
            row += f" {q['accuracy_int8'][i] * 100:.2f} | {q['argmax_agreement_with_fp32'][i] * 100:.2f} |"
        console.print(row, soft_wrap=True)
    console.print(f"max |dlogit| onnx fp32 vs torch: {max(par['max_abs_logit_diff']):.3e}")
    if q:
        s = m.int8["settings"]
        drop = (q["accuracy_fp32"][-1] - q["accuracy_int8"][-1]) * 100
        console.print(
            f"int8 ({s['quant_format']}, {s['calibration_method']}, {s['calibration_samples']} calibration samples "
            f"from {s['split']}): last-exit accuracy {q['accuracy_int8'][-1] * 100:.2f}% vs fp32 "
            f"{q['accuracy_fp32'][-1] * 100:.2f}% ({drop:+.2f} pp drop)"
        )
    console.print(f"manifest: {m.path}")
