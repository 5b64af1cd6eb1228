"""CLI smoke test: distree calibrate → policy file → distree evaluate → table, JSON, PNG."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from distree.cli import app
from distree.evaluation.synthetic import synthetic_trace
from distree.policies import load_policy

runner = CliRunner()


def _calibrate(trace, out, *args: str):
    """``distree calibrate --trace TRACE ARGS --out OUT``; asserts it succeeded."""
    r = runner.invoke(app, ["calibrate", "--trace", str(trace), *args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return r


def test_calibrate_then_evaluate(tmp_path):
    val = synthetic_trace(1500, 4, seed=21)
    val.meta["split"] = "val"
    test = synthetic_trace(1500, 4, seed=22)
    test.meta["split"] = "test"
    vp, tp = val.save(tmp_path / "v.trace.safetensors"), test.save(tmp_path / "t.trace.safetensors")

    pf = tmp_path / "distree.json"
    r = _calibrate(vp, pf, "--policy", "distree", "--max-accuracy-drop", "1.0")
    assert "saving" in r.output
    pol = load_policy(pf)
    assert pol.name == "distree" and pol.calibration["validation"]["drop_pp"] <= 1.0 + 1e-9
    assert "cross-fit (5 folds): expected held-out drop" in r.output
    cf = pol.calibration["cross_fit"]
    assert pol.calibration["method"] == "cross-fit" and cf["internal_target_pp"] <= 1.0 + 1e-9
    assert {"held_out_drop_pp", "held_out_drop_pp_sd", "held_out_saving", "held_out_saving_sd"} <= set(cf)

    rf = tmp_path / "conf-risk.json"
    _calibrate(vp, rf, "--policy", "confidence", "--max-accuracy-drop", "1.0", "--confidence", "0.9")

    other = synthetic_trace(1500, 4, seed=23)
    other.meta["split"] = "train"
    op = other.save(tmp_path / "train.trace.safetensors")
    pt = tmp_path / "path-trace.json"
    r = _calibrate(vp, pt, "--max-accuracy-drop", "1.0", "--confidence", "0.9", "--path-trace", str(op))
    assert "certified on 1500 samples, ordered on 1500 of the path trace" in r.output
    assert load_policy(pt).calibration["path_trace"]["split"] == "train"
    r = _calibrate(vp, pt, "--max-accuracy-drop", "1.0", "--path-trace", str(op))
    assert "along" in r.output and "thresholds of the path trace" in r.output
    cal = load_policy(pt).calibration
    assert cal["search"] == "path trace" and cal["path_trace"] == {"split": "train", "num_samples": 1500}
    rp = tmp_path / "repeats.json"
    r = _calibrate(vp, rp, "--policy", "confidence", "--max-accuracy-drop", "1.0", "--folds", "3", "--repeats", "2")
    assert "cross-fit (3 folds x 2 repeats)" in r.output
    cf = load_policy(rp).calibration["cross_fit"]
    assert (cf["folds"], cf["repeats"]) == (3, 2)
    assert load_policy(rf).calibration["method"] == "learn-then-test"

    bf = tmp_path / "budget.json"
    _calibrate(vp, bf, "--policy", "distree", "--param", "measure=js", "--flops-budget", "0.7")
    assert load_policy(bf).params["measure"] == "js"

    # the old behaviour, and how far a target can be trusted
    inf = tmp_path / "in-sample.json"
    r = _calibrate(
        vp, inf, "--policy", "confidence", "--max-accuracy-drop", "1.0", "--method", "in-sample", "--check-splits", "4"
    )
    assert load_policy(inf).calibration["method"] == "in-sample"
    assert "4 random splits: calibrate (in-sample, drop <= 1.0 pp) on 750 samples" in r.output
    for row in ("drop pp", "saving %", "p75", "p90"):
        assert row in r.output
    assert "over the target on" in r.output
    r = runner.invoke(
        app,
        ["calibrate", "--trace", str(vp), "--flops-budget", "0.5", "--method", "in-sample", "--out", str(inf)],
    )
    assert r.exit_code != 0 and "--method" in r.output

    out = tmp_path / "report"
    r = runner.invoke(
        app,
        [
            "evaluate",
            "--trace",
            str(tp),
            "--val-trace",
            str(vp),
            "--policies",
            "all",
            "--policy-files",
            str(pf),
            "--policy-files",
            str(rf),
            "--policy-files",
            str(bf),
            "--splits",
            "2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (out / "report.md").is_file() and (out / "pareto.png").stat().st_size > 1000
    rep = json.loads((out / "report.json").read_text())
    labels = {x["label"] for x in rep["results"]}
    assert {"distree", "conf-risk", "oracle", "last-exit", "random", "patience"} <= labels
    # the measure=js file is its own family, with operating points chosen on validation and their spread
    fams = {x["family"]: x for x in rep["results"] if x["operating_points"]}
    assert "distree (measure=js)" in fams and "distree" in fams
    op = fams["distree"]["operating_points"][2]
    assert op["target_pp"] == 0.5 and len(op["split_savings"]) == 2 and op["split_sd_savings"] is not None
    md = (out / "report.md").read_text()
    assert "| distree (measure=js) |" in md and "Spread over 2 random re-splits" in md


def test_cli_errors_are_clear(tmp_path):
    r = runner.invoke(
        app,
        [
            "calibrate",
            "--trace",
            str(tmp_path / "nope.safetensors"),
            "--max-accuracy-drop",
            "0.5",
            "--out",
            str(tmp_path / "p.json"),
        ],
    )
    assert r.exit_code != 0 and "no trace file" in r.output
    tr = synthetic_trace(300, 3, seed=1).save(tmp_path / "t.trace.safetensors")
    r = runner.invoke(app, ["calibrate", "--trace", str(tr), "--out", str(tmp_path / "p.json")])
    assert r.exit_code != 0 and "exactly one target" in r.output
    r = runner.invoke(app, ["evaluate", "--trace", str(tr), "--policies", "distree", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--val-trace" in r.output
    r = runner.invoke(app, ["evaluate", "--trace", str(tr), "--policies", "bogus", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "unknown policy" in r.output
