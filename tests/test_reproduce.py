"""`experiments/reproduce.py --quick` end to end on a tiny checkpoint: every step runs, is resumable, and
what it prints matches the files it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distree.trace import load_trace

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "reproduce.py"), *args],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_reproduce_quick_runs_every_step_and_resumes(tiny_checkpoint, tmp_path):
    from distree.training import TrainConfig, train

    # the same tiny model trained with another objective, beside it: the ablation step finds it
    ckpts = tmp_path / "ckpts"
    shutil.copytree(tiny_checkpoint, ckpts / "tiny-distree")
    cfg = TrainConfig.load(tiny_checkpoint / "train_config.json")
    ce = TrainConfig.from_dict({**cfg.to_dict(), "objective": "ce", "kd_weight": None, "ft_weight": None})
    train(ce, ckpts / "tiny-ce")
    out = tmp_path / "repro"
    args = ["--checkpoint", str(ckpts / "tiny-distree"), "--out", str(out), "--quick",
            "--traces", str(ROOT / "tests" / "fixtures" / "traces")]  # fmt: skip
    res = _run(*args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for step in ("trace", "calibrate", "evaluate", "signals", "qos-sim", "qos", "ablation"):
        assert (out / step / ".done").is_file(), step
    abl = json.loads((out / "ablation" / "ablation.json").read_text())
    assert [r["objective"] for r in abl["rows"]] == ["ce", "distree"]
    # the ablation's distree row is the trace step's model: the same per-exit accuracy
    assert abl["rows"][1]["test_accuracy"] == pytest.approx(
        list(load_trace(out / "trace" / "test.trace.safetensors").correct.mean(0)), abs=1e-9
    )
    assert (out / "ablation" / "ablation.png").stat().st_size > 1000
    # the model card's check: per-exit accuracy printed by the trace step is the trace file's
    test = load_trace(out / "trace" / "test.trace.safetensors")
    log = (out / "trace" / "log.txt").read_text()
    test_log = log.split("--split test")[1].split("$ ")[0]  # the test split's command and its output
    printed = test_log.split("accuracy % per exit:")[-1].split()[: test.num_nodes]
    assert [float(p) for p in printed] == pytest.approx(list(100 * test.correct.mean(0)), abs=0.006)
    assert (out / "evaluate" / "report.md").is_file() and (out / "evaluate" / "pareto.png").is_file()
    sig = json.loads((out / "signals" / "exit_signals.json").read_text())
    assert {r["signal"] for r in sig["auc"]} >= {"confidence", "pred-tv", "feat-aligned"}
    assert any((out / "qos-sim").glob("*.png"))
    qos = json.loads((out / "qos" / "qos.json").read_text())
    assert {r["policy"] for r in qos["rows"]} == {"distree-conf", "last-exit"}
    assert all(r["runtime"]["lost"] == 0 for r in qos["rows"])
    # resumable: a second run finds every step done and redoes nothing
    again = _run(*args)
    assert again.returncode == 0 and again.stdout.count("done already") == 8
    assert "$ " not in again.stdout
