import subprocess
import sys


def test_demo_runs_the_pipeline_end_to_end(tmp_path):
    """`make demo`'s job, shortened: every step of train → trace → calibrate → evaluate → simulate runs."""
    out = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "distree", "demo", "--out", str(out), "--epochs", "2", "--no-serve"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for f in (
        "checkpoint/model.safetensors",
        "val.trace.safetensors",
        "test.trace.safetensors",
        "policy.json",
        "evaluation/report.md",
        "evaluation/pareto.png",
    ):
        assert (out / f).is_file(), f
    assert any((out / "simulation").glob("*.png"))
