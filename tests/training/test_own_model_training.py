"""Training a builder of the user's own and rebuilding its checkpoint anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distree.checkpoint import CheckpointError, load_checkpoint, read_sidecar
from distree.models import ModelError
from distree.training import TrainConfig, train

MODULE = '''
import torch
from torch import nn

from distree import from_sequential


def _blocks(c):
    return [nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())]


def flexible(num_nodes=3, *, num_classes=10, in_channels=1, input_size=8, width=1):
    return from_sequential(_blocks(in_channels), num_nodes, torch.zeros(2, in_channels, input_size, input_size),
                           num_classes=num_classes)


def shape_fixed(num_nodes=3):
    """No in_channels / input_size / num_classes: 1x8x8 inputs, 4 classes (the synthetic dataset)."""
    return from_sequential(_blocks(1), num_nodes, torch.zeros(2, 1, 8, 8), num_classes=4)


def for_mnist(num_nodes=3):
    return from_sequential(_blocks(1), num_nodes, torch.zeros(2, 1, 28, 28), num_classes=4)


def ten_classes(num_nodes=3, in_channels=1, input_size=8):
    return from_sequential(_blocks(in_channels), num_nodes, torch.zeros(2, in_channels, input_size, input_size),
                           num_classes=10)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    name = f"ownnets_{tmp_path.name.replace('-', '_')}"
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(src))
    return name, src


def _cfg(model: str, **kw) -> TrainConfig:
    return TrainConfig(
        model=model, num_nodes=3, dataset="synthetic", epochs=1, batch_size=32, max_steps_per_epoch=2, **kw
    )


def test_a_builder_without_shape_arguments_trains_when_the_data_fits(user_module, tmp_path):
    name, _ = user_module
    res = train(_cfg(f"{name}:shape_fixed"), tmp_path / "run")
    assert res.model.num_nodes == 3
    side = read_sidecar(tmp_path / "run")
    assert side["model"] == f"{name}:shape_fixed" and side["builder"] == f"{name}:shape_fixed"
    assert side["model_args"] == {"num_nodes": 3}  # nothing the builder does not take


def test_model_args_reach_the_builder_and_the_sidecar(user_module, tmp_path):
    name, _ = user_module
    train(_cfg(f"{name}:flexible", model_args={"width": 2}), tmp_path / "run")
    side = read_sidecar(tmp_path / "run")
    assert side["model_args"] == {"num_nodes": 3, "num_classes": 4, "in_channels": 1, "input_size": 8, "width": 2}
    assert side["train_config"]["model_args"] == {"width": 2}


def test_a_builder_that_cannot_take_the_data_shape_is_a_clear_error(user_module, tmp_path):
    name, _ = user_module
    with pytest.raises(
        ModelError,
        match=r"built for inputs of shape \(1, 28, 28\) but dataset 'synthetic' has "
        r"\(1, 8, 8\); give the builder 'in_channels' and 'input_size' parameters",
    ):
        train(_cfg(f"{name}:for_mnist"), tmp_path / "a")
    with pytest.raises(
        ModelError, match="has 10 classes but dataset 'synthetic' has 4; give the builder a 'num_classes' parameter"
    ):
        train(_cfg(f"{name}:ten_classes"), tmp_path / "b")
    with pytest.raises(ModelError, match="takes no 'head' argument"):
        train(_cfg(f"{name}:shape_fixed", head={"kind": "linear"}), tmp_path / "c")
    with pytest.raises(ModelError, match="takes no argument 'depth'; it accepts: num_classes=10.*width=1"):
        train(_cfg(f"{name}:flexible", model_args={"depth": 3}), tmp_path / "d")


def _load_in_fresh_process(ckpt: Path, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    code = (
        "import sys, json\n"
        "from distree import load_checkpoint\n"
        f"m, side = load_checkpoint({str(ckpt)!r})\n"
        "print(json.dumps({'nodes': m.num_nodes, 'model': side['model'], 'type': type(m).__name__}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/", timeout=120)


def test_checkpoint_loads_in_a_fresh_process_that_never_imported_the_module(user_module, tmp_path):
    name, src = user_module
    train(_cfg(f"{name}:flexible"), tmp_path / "run")
    ok = _load_in_fresh_process(tmp_path / "run", str(src))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"nodes": 3, "model": f"{name}:flexible", "type": "MultiExitNetwork"}
    missing = _load_in_fresh_process(tmp_path / "run", None)
    assert missing.returncode != 0
    assert f"needs module {name!r}, which cannot be imported" in missing.stderr
    assert f"add the folder holding {name}.py" in missing.stderr and "PYTHONPATH" in missing.stderr


def test_a_moved_module_is_a_checkpoint_error_naming_it(user_module, tmp_path):
    name, _ = user_module
    train(_cfg(f"{name}:flexible"), tmp_path / "run")
    side = json.loads((tmp_path / "run" / "model.json").read_text())
    side["builder"] = "gone_package_q.nets:flexible"
    (tmp_path / "run" / "model.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="needs module 'gone_package_q.nets'.*install the package"):
        load_checkpoint(tmp_path / "run")
