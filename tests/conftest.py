"""Shared fixtures: a tiny trained checkpoint (small-cnn on synthetic data) reused across test packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-node small-cnn trained for a few epochs on the synthetic dataset (seconds on a CPU)."""
    from distree.training import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_ckpt")
    cfg = TrainConfig(
        model="small-cnn",
        num_nodes=4,
        dataset="synthetic",
        epochs=3,
        batch_size=32,
        lr=0.05,
        objective="distree",
        model_args={"width": 8},
    )
    train(cfg, out)
    return out


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``distree export --format onnx --quantize int8`` of the tiny checkpoint: (export folder, CLI output).

    Tests using it run in one xdist group (``onnx-export``) so the export is made once."""
    from typer.testing import CliRunner

    from distree.cli import app

    out = tmp_path_factory.mktemp("tiny_export") / "export"
    res = CliRunner().invoke(
        app,
        ["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--out", str(out), "--quantize", "int8"],
    )
    assert res.exit_code == 0, res.output
    return out, res.output
