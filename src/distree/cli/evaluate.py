"""``distree evaluate``: score policies offline on a test trace; table, JSON and Pareto plot."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from . import app
from ._common import console, fail, guarded, warn


@app.command("evaluate")
def evaluate_cmd(
    trace: Path = typer.Option(..., help="Evaluation trace (test split)."),
    policies: str = typer.Option(
        "all", help="Comma-separated policy names, 'all' (every policy) or 'none' (only --policy-files)."
    ),
    policy_files: list[Path] = typer.Option(
        None, help="Calibrated policy files (repeatable); a folder stands for every *.json in it."
    ),
    val_trace: Path | None = typer.Option(
        None, help="Validation trace: calibrates named policies without a file, and fits the Pareto sweeps."
    ),
    max_accuracy_drop: float = typer.Option(0.5, help="Target (pp) when calibrating named policies on --val-trace."),
    path_trace: Path | None = typer.Option(
        None,
        help="Calibrate named policies along the thresholds of this trace of the same model on other samples "
        "(its training split), as `distree calibrate --path-trace` does.",
    ),
    sweep: bool = typer.Option(True, help="Pareto sweeps and operating points of every tunable policy."),
    splits: int = typer.Option(
        3, help="Operating points: random re-splits of validation + test samples behind the spread (0: none)."
    ),
    seed: int = typer.Option(0, help="Seed of the re-splits and of the cross-fit folds."),
    out: Path = typer.Option(..., help="Output folder: report.md, report.json, pareto.png."),
) -> None:
    """Accuracy, drop vs last exit, FLOPs saving, bytes, exit histogram and Pareto curves per policy."""
    from ..calibration import calibrate
    from ..evaluation.report import build_report, write_report
    from ..policies import DEFAULT_PARAMS, DEFAULT_POLICY, create_policy, list_policies, load_policy
    from ..trace import TraceError, load_trace

    test = guarded(lambda: load_trace(trace), TraceError)
    val = guarded(lambda: load_trace(val_trace), TraceError) if val_trace is not None else None
    path_tr = guarded(lambda: load_trace(path_trace), TraceError) if path_trace is not None else None
    if test.meta.get("split") == "val" and val is not None:
        warn("--trace is a validation trace; evaluate on the test split")
    entries = []
    files: list[Path] = []
    for f in policy_files or []:
        if f.is_dir():
            found = sorted(f.glob("*.json"))
            if not found:
                fail(f"policy folder {f} holds no *.json policy files; create them with `distree calibrate`")
            files += found
        else:
            files.append(f)
    for f in files:
        p = guarded(partial(load_policy, f))
        entries.append((f.stem, p))
    covered = {p.name for _, p in entries}
    if policies == "all":
        names = list_policies()
    elif policies == "none":
        names = []
    else:
        names = [n.strip() for n in policies.split(",") if n.strip()]
        unknown = [n for n in names if n not in list_policies()]
        if unknown:
            fail(f"unknown policy {', '.join(unknown)}; available: {', '.join(list_policies())}")
    for n in names:
        if n in covered:
            continue
        pol = guarded(partial(create_policy, n, test.num_nodes, **(DEFAULT_PARAMS if n == DEFAULT_POLICY else {})))
        if pol.tunable:
            if val is None:
                fail(
                    f"policy {n!r} has no policy file and needs calibrating: pass --val-trace VAL "
                    f"(or --policy-files from `distree calibrate`, or --policies with only untuned ones)"
                )
            pol = guarded(partial(calibrate, pol, val, max_drop_pp=max_accuracy_drop, path_trace=path_tr))
        entries.append((n, pol))
    if splits < 0:
        fail(f"--splits must be >= 0, got {splits}")
    rep = guarded(lambda: build_report(test, entries, fit_trace=val, sweep=sweep, splits=splits, seed=seed))
    paths = write_report(rep, out)
    console.print(paths["markdown"].read_text())
    console.print(f"report: {paths['markdown']}, {paths['json']}, {paths['plot']}")
