"""Acceptance: a model from an installed package goes through the whole CLI with no wrapper script.

The package is defined here: a module on ``sys.path`` (``PYTHONPATH``) and an entry point in a
``*.dist-info`` folder next to it, as ``pip install`` would leave them. Every step is a plain
``python -m distree`` process started from another folder: train, trace, calibrate (the default
policy), evaluate (every policy), profile-device, a real 4-node cluster (up, infer, down), and
loading the checkpoint in a fresh process. (Listing and argument errors: tests/cli/test_train_cli.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distree.runtime.cluster import free_ports
from distree.runtime.spec import load_spec
from distree.runtime.spec_toml import spec_toml

pytestmark = pytest.mark.slow

NETS = '''
"""ownzoo.nets: a VGG-style CNN whose exits have unequal feature widths."""
import torch
from torch import nn

from distree import from_sequential


def vgg(num_nodes=4, *, num_classes=10, in_channels=1, input_size=8, width=1.0):
    widths = [max(4, int(w * width)) for w in (16, 16, 32, 32, 64, 64)]
    blocks, c = [], in_channels
    for i, w in enumerate(widths):
        blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, 2 if i in (2, 4) else 1, 1, bias=False),
                                    nn.BatchNorm2d(w), nn.ReLU()))
        c = w
    example = torch.zeros(2, in_channels, input_size, input_size)
    return from_sequential(blocks, num_nodes, example, num_classes=num_classes)
'''


def make_package(site: Path) -> None:
    (site / "ownzoo").mkdir(parents=True)
    (site / "ownzoo" / "__init__.py").write_text("")
    (site / "ownzoo" / "nets.py").write_text(NETS)
    dist = site / "ownzoo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ownzoo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[distree.models]\nownzoo-vgg = ownzoo.nets:vgg\n")


@pytest.mark.timeout(1500)
def test_a_packaged_model_trains_traces_calibrates_evaluates_and_serves(tmp_path: Path):
    site, work = tmp_path / "site", tmp_path / "work"
    make_package(site)
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}

    def distree(*args: str, environ: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [sys.executable, "-m", "distree", *args],
            cwd=work,
            env=environ or env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if ok:
            assert res.returncode == 0, f"distree {' '.join(args)}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        res.stdout, res.stderr = " ".join(res.stdout.split()), " ".join(res.stderr.split())  # undo rich's wrapping
        return res

    tr = distree(
        "train",
        "--model",
        "ownzoo-vgg",
        "--model-args",
        '{"width": 0.5}',
        "--nodes",
        "4",
        "--dataset",
        "synthetic",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--out",
        "ckpt",
    )
    assert "exit heads cost" in tr.stdout
    side = json.loads((work / "ckpt" / "model.json").read_text())
    assert side["model"] == "ownzoo-vgg" and side["builder"] == "ownzoo.nets:vgg"
    assert side["model_args"]["width"] == 0.5 and side["train_config"]["model_args"] == {"width": 0.5}
    assert (
        max(side["cost_profile"]["exit_flops"][i] / side["cost_profile"]["segment_flops"][i] for i in range(4)) <= 0.02
    )
    assert len(set(side["feature_dims"])) > 1  # unequal widths: the case the default policy must handle

    distree("trace", "--checkpoint", "ckpt", "--split", "val", "--out", "val.trace.safetensors")
    distree("trace", "--checkpoint", "ckpt", "--split", "test", "--out", "test.trace.safetensors")
    cal = distree("calibrate", "--trace", "val.trace.safetensors", "--max-accuracy-drop", "1.0", "--out", "policy.json")
    assert "distree-conf" in cal.stdout
    distree(
        "evaluate",
        "--trace",
        "test.trace.safetensors",
        "--val-trace",
        "val.trace.safetensors",
        "--policies",
        "all",
        "--policy-files",
        "policy.json",
        "--out",
        "report",
    )
    report = json.loads((work / "report" / "report.json").read_text())
    assert "distree-conf" in json.dumps(report) and "confidence" in json.dumps(report)
    distree("profile-device", "--checkpoint", "ckpt", "--out", "profile.json", "--repeats", "3", "--warmup", "1")
    assert json.loads((work / "profile.json").read_text())["model"] == "ownzoo-vgg"

    # serve: four real node processes, each of which imports ownzoo from the checkpoint's record
    nodes = [{"address": f"127.0.0.1:{p}", "segment": k + 1} for k, p in enumerate(free_ports(4))]
    (work / "cluster.toml").write_text(spec_toml((work / "ckpt").resolve(), (work / "policy.json").resolve(), nodes))
    spec = load_spec(work / "cluster.toml")
    try:
        distree("cluster", "up", "--spec", "cluster.toml", "--detach", "--log-dir", "logs")
        inf = distree("infer", "--spec", "cluster.toml", "--dataset", "synthetic", "--limit", "20")
        assert "accuracy:" in inf.stdout and "exits: node 1" in inf.stdout
        down = distree("cluster", "down", "--spec", "cluster.toml")
        assert down.stdout.count("stopped") == 4, down.stdout
    finally:
        if spec.pid_file.exists():
            for pid in json.loads(spec.pid_file.read_text()).values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            spec.pid_file.unlink()

    code = (
        "import json\nfrom distree import load_checkpoint\n"
        "m, side = load_checkpoint('ckpt')\n"
        "print(json.dumps([m.num_nodes, side['model'], side['builder'], m.feature_dims()]))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    nodes_, model, builder, dims = json.loads(fresh.stdout)
    assert (nodes_, model, builder, dims) == (4, "ownzoo-vgg", "ownzoo.nets:vgg", side["feature_dims"])

    # without the package on the path: one clear error naming the module and the fix
    gone = distree("trace", "--checkpoint", "ckpt", "--split", "val", "--out", "x.safetensors", environ=bare, ok=False)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr + gone.stdout
    assert "needs module 'ownzoo.nets'" in gone.stderr and "PYTHONPATH" in gone.stderr
