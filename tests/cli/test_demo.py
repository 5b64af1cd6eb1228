"""`distree demo` end to end: every step runs, and what it prints is what it wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distree.trace import load_trace


def _rows(text: str, header: str) -> dict[str, list[str]]:
    """Cells of the markdown table printed after the line starting with ``header``, by first cell."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    out: dict[str, list[str]] = {}
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def _matches(printed: list[str], values: list[float], what: str) -> None:
    """Each printed number is its value rounded to the digits shown."""
    assert len(printed) == len(values), what
    for p, v in zip(printed, values, strict=True):
        digits = len(p.split(".")[1]) if "." in p else 0
        assert abs(float(p) - v) <= 0.5 * 10.0**-digits + 1e-9, (what, p, v)


@pytest.mark.slow
@pytest.mark.timeout(900)  # trains, traces, calibrates, evaluates and simulates in six processes
def test_demo_runs_the_pipeline_and_prints_what_it_wrote(tmp_path):
    """`make demo`'s job, shortened: train → trace → calibrate → evaluate → simulate; printed figures match files."""
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "distree", "demo", "--out", str(out), "--epochs", "2", "--no-serve"],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"},  # wide enough that no table wraps
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    check_printed_against_files(out, res.stdout)


def check_printed_against_files(out: Path, text: str) -> None:
    for f in ("checkpoint/model.safetensors", "evaluation/report.md", "evaluation/pareto.png"):
        assert (out / f).is_file(), f
    assert any((out / "simulation").glob("*.png"))

    # 1. training: the per-exit validation accuracies of the last epoch
    hist = json.loads((out / "checkpoint" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    printed = [m.group(1) for m in re.finditer(r"│\s+\d\s+│\s+([0-9.]+)\s+│", text)]
    _matches(printed, [100 * a for a in hist[-1]["val_acc"]], "training")

    # 2. traces: accuracy per exit, recomputed from the trace files
    for split in ("val", "test"):
        tr = load_trace(out / f"{split}.trace.safetensors")
        m = re.search(
            rf"{split}\.trace\.safetensors\n(\d+) samples, 4 exits \(torch\); accuracy % per exit: ([0-9. ]+)", text
        )
        assert m and int(m.group(1)) == tr.num_samples, split
        _matches(m.group(2).split(), list(100 * tr.correct.mean(0)), split)

    # 3. calibration: the validation figures stored in the policy file
    v = json.loads((out / "policy.json").read_text())["calibration"]["validation"]
    m = re.search(
        r"validation: accuracy ([0-9.]+)% \(last exit ([0-9.]+)%\), drop ([-+0-9.]+) pp, "
        r"FLOPs ([0-9.]+) of last exit \(saving ([-0-9.]+)%\)",
        text,
    )
    assert m, text
    want = [100 * v["accuracy"], 100 * v["last_exit_accuracy"], v["drop_pp"], v["rel_flops"], 100 * v["saving"]]
    _matches(list(m.groups()), want, "calibration")

    # 4. evaluation: every printed row is the report's
    rep = json.loads((out / "evaluation" / "report.json").read_text())
    rows = _rows(text, "| policy | accuracy % |")
    assert len(rows) == len(rep["results"]) >= 9
    for r in rep["results"]:
        mt = r["metrics"]
        name = r["label"] + ("" if r["policy"]["deployable"] else " (not deployable)")
        want = [100 * mt["accuracy"], mt["drop_pp"], mt["rel_flops"], 100 * mt["saving"], mt["mean_bytes"] / 1024]
        _matches(rows[name][:5], want, name)
        _matches(rows[name][5].split(" / "), [100 * h for h in mt["exit_hist"]], name)
    assert f"Last exit: accuracy {100 * rep['last_exit']['accuracy']:.2f}%" in text
    # the calibrated policy scores on test what the test trace says
    tr = load_trace(out / "test.trace.safetensors")
    assert rep["results"][0]["label"] == "policy" and rep["last_exit"]["accuracy"] == pytest.approx(
        tr.correct[:, -1].mean()
    )

    # 5. simulation: the printed table is the aggregates file
    agg = {a["policy"]: a for a in json.loads((out / "simulation" / "demo-edge-chain.json").read_text())}
    rows = _rows(text, "| policy | acc % |")
    assert set(rows) == set(agg) == {"distree-conf", "last-exit"}
    for name, a in agg.items():
        assert a["requests"] == 2000
        want = [100 * a["accuracy"], 100 * a["compute_saved"], 1000 * a["latency_mean_s"]]
        want += [1000 * a[f"latency_p{q}_s"] for q in (50, 95, 99)]
        want += [100 * a["deadline_miss_rate"], 100 * a["qos_exit_rate"], 100 * a["degraded_rate"]]
        _matches(rows[name][:9], want, name)


@pytest.mark.timeout(600)
def test_demo_with_a_trained_checkpoint_skips_training(tiny_checkpoint, tmp_path):
    """`distree demo --checkpoint DIR`: no training; the rest runs on that checkpoint's dataset."""
    out = tmp_path / "demo"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "distree",
            "demo",
            "--out",
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
            "--limit",
            "120",
            "--no-serve",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "COLUMNS": "250", "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"1. using the trained checkpoint {tiny_checkpoint} (synthetic); no training" in res.stdout
    assert "$ distree train" not in res.stdout and not (out / "checkpoint").exists()
    assert "[bold" not in res.stdout  # titles are styled, not printed as markup
    for split in ("val", "test"):  # the synthetic val split is smaller than the limit
        assert 0 < load_trace(out / f"{split}.trace.safetensors").num_samples <= 120
    assert (out / "evaluation" / "report.md").is_file() and any((out / "simulation").glob("*.png"))


def test_demo_refuses_a_folder_that_is_no_checkpoint(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "distree", "demo", "--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert f"--checkpoint {tmp_path}" in res.stderr + res.stdout
