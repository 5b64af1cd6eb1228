"""``distree demo``: the whole pipeline on the embedded digits data, as the commands a user would type.

train → trace (val, test) → calibrate → evaluate → simulate → serve a 4-node cluster and send it
the test set. Every step is a ``distree`` subcommand run as its own process and echoed first, so
the demo doubles as a tutorial. Needs no download; about a minute on two CPU cores.

``--checkpoint DIR`` skips training and runs the rest on that checkpoint's dataset (e.g. the
committed CIFAR-10 model with ``--data-dir`` pointing at the data; ``--limit`` traces and serves
only the first N samples of each split).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import typer

from . import app
from ._common import console, fail


def _rule(title: str, style: str = "bold") -> None:
    from rich.text import Text

    console.rule(Text(title, style=style))


def _run(args: list[str]) -> None:
    console.print(f"\n$ distree {shlex.join(args)}", style="bold cyan")
    rc = subprocess.call([sys.executable, "-m", "distree", *args])
    if rc != 0:
        fail(f"step `distree {args[0]}` failed with exit code {rc}", code=rc)


def _scenario(out: Path, flops_per_s: float = 1e8) -> Path:
    """A 4-node edge chain: modest devices, Wi-Fi-like links, Poisson arrivals with a deadline."""
    path = out / "scenario.toml"
    path.write_text(
        "\n".join(
            [
                'name = "demo-edge-chain"',
                "seed = 0",
                "[workload]",
                'arrival = "poisson"',
                "rate_per_s = 40.0",
                "requests = 2000",
                "deadline_s = 0.03",
                "[devices]",
                f"flops_per_s = {flops_per_s:.6g}",
                'speed = { kind = "markov", factors = [1.0, 0.4], mean_holding_s = [5.0, 2.0] }',
                "[network.uplink]",
                "bandwidth_mbps = 20.0",
                "delay_s = 0.002",
                "[network.hops]",
                "bandwidth_mbps = 20.0",
                "delay_s = 0.002",
                "",
            ]
        )
    )
    return path


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output directory."),
    epochs: int = typer.Option(8, help="Training epochs."),
    serve: bool = typer.Option(True, help="Also start a real 4-node cluster on loopback and query it."),
    checkpoint: Path | None = typer.Option(
        None, help="Use this trained checkpoint (e.g. checkpoints/wrn16-1-cifar10-distree) instead of training."
    ),
    data_dir: str | None = typer.Option(None, help="Dataset folder of the checkpoint's dataset (with --checkpoint)."),
    limit: int | None = typer.Option(None, min=1, help="Trace and serve only the first N samples of each split."),
) -> None:
    """Run train → trace → calibrate → evaluate → simulate → serve on the embedded digits (no download)."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ckpt, val, test, pol = (
        out / "checkpoint",
        out / "val.trace.safetensors",
        out / "test.trace.safetensors",
        out / "policy.json",
    )
    data = ["--data-dir", data_dir] if data_dir else []
    lim = ["--limit", str(limit)] if limit else []
    dataset = "digits"
    if checkpoint is not None:
        from ..checkpoint import CheckpointError, read_sidecar

        try:
            side = read_sidecar(checkpoint)
        except (CheckpointError, FileNotFoundError) as e:
            fail(f"--checkpoint {checkpoint}: {e}")
        ckpt, dataset = checkpoint, str(side.get("dataset") or "digits")
        _rule(f"1. using the trained checkpoint {ckpt} ({dataset}); no training")
    else:
        _rule("1. joint training of a 4-node multi-exit CNN (CE + KD + feature transfer)")
        _train(ckpt, epochs)
    _rule("2. traces: every exit's outputs on validation and test data")
    _run(["trace", "--checkpoint", str(ckpt), "--split", "val", "--out", str(val), *data, *lim])
    _run(["trace", "--checkpoint", str(ckpt), "--split", "test", "--out", str(test), *data, *lim])
    _rest(out, ckpt, val, test, pol, dataset, data + lim, serve)
    _rule(f"demo done in {time.perf_counter() - t0:.0f} s; everything is in {out}", style="bold green")


def _train(ckpt: Path, epochs: int) -> None:
    _run(
        [
            "train",
            "--model",
            "small-cnn",
            "--nodes",
            "4",
            "--dataset",
            "digits",
            "--val-fraction",
            "0.25",
            "--epochs",
            str(epochs),
            "--batch-size",
            "64",
            "--lr",
            "0.05",
            "--objective",
            "distree",
            "--out",
            str(ckpt),
        ]
    )


def _rest(out: Path, ckpt: Path, val: Path, test: Path, pol: Path, dataset: str, data: list[str], serve: bool) -> None:
    """Steps 3-6: calibrate, evaluate, simulate, serve."""
    from ..runtime.cluster import free_ports
    from ..runtime.spec_toml import spec_toml
    from ..trace import load_trace

    # devices fast enough that the whole chain takes 20 ms at full speed (the deadline is 30 ms)
    flops_per_s = load_trace(test).cost.last_exit_cost() / 0.02
    _rule("3. calibrate the default exit policy on validation data (<= 0.5 pp accuracy drop)")
    _run(["calibrate", "--trace", str(val), "--max-accuracy-drop", "0.5", "--out", str(pol)])
    _rule("4. evaluate every policy offline on the test trace")
    _run(
        [
            "evaluate",
            "--trace",
            str(test),
            "--val-trace",
            str(val),
            "--policies",
            "all",
            "--policy-files",
            str(pol),
            "--out",
            str(out / "evaluation"),
        ]
    )
    _rule("5. simulate an edge chain with fluctuating devices and a 30 ms deadline")
    _run(
        [
            "simulate",
            "--scenario",
            str(_scenario(out, flops_per_s)),
            "--trace",
            str(test),
            "--policy",
            f"{pol},last-exit",
            "--out",
            str(out / "simulation"),
        ]
    )
    if serve:
        _rule("6. serve: 4 real gRPC node processes; node 1 speaks the Open Inference Protocol")
        ports = free_ports(4)
        nodes = [{"address": f"127.0.0.1:{p}", "segment": k + 1} for k, p in enumerate(ports)]
        spec = out / "cluster.toml"
        spec.write_text(spec_toml(ckpt.resolve(), pol.resolve(), nodes))
        _run(["cluster", "up", "--spec", str(spec), "--detach", "--log-dir", str(out / "logs")])
        try:
            _run(["infer", "--spec", str(spec), "--dataset", dataset, "--split", "test", "--show", "8", *data])
        finally:
            _run(["cluster", "down", "--spec", str(spec)])
