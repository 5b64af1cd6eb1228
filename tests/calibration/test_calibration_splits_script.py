"""experiments/calibration_splits.py on traces of the tiny test checkpoint: table, JSON and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_calibration_splits_script_on_tiny_checkpoint_traces(tiny_checkpoint, tmp_path):
    from distree.trace import trace_checkpoint

    paths = []
    for split in ("val", "test"):
        paths.append(trace_checkpoint(tiny_checkpoint, split).save(tmp_path / f"{split}.trace.safetensors"))
    out = tmp_path / "splits"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "calibration_splits.py"),
            "--traces",
            *map(str, paths),
            "--policies",
            "confidence,distree",
            "--splits",
            "3",
            "--target",
            "1.0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "| confidence | cross-fit |" in r.stdout and "| distree | risk |" in r.stdout
    js = json.loads((out / "calibration_splits.json").read_text())
    rows = {(x["policy"], x["mode"]) for x in js["rows"]}
    assert rows == {
        (p, m) for p in ("confidence", "distree") for m in ("cross-fit", "in-sample", "risk", "risk-interp")
    }
    for x in js["rows"]:
        assert len(x["drops_pp"]) == 3 and len(x["hindsight"]) == 3
        assert 0 <= x["violations"] <= 3
    assert (out / "calibration_splits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
