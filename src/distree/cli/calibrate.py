"""``distree calibrate``: per-node exit thresholds from a validation trace → a policy file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from . import app
from ._common import console, fail, guarded, warn


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["measure=js", "alpha=0.5"]`` → ``{"measure": "js", "alpha": 0.5}`` (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            fail(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command("calibrate")
def calibrate_cmd(
    trace: Path = typer.Option(..., help="Validation trace (*.trace.safetensors from `distree trace --split val`)."),
    policy: str = typer.Option("", help="Policy name (see `distree policies`); default: the default policy."),
    param: list[str] = typer.Option(None, help="Policy parameter KEY=VALUE (repeatable), e.g. measure=js."),
    max_accuracy_drop: float | None = typer.Option(
        None, help="Target: accuracy drop vs last exit, percentage points (minimise FLOPs)."
    ),
    flops_budget: float | None = typer.Option(
        None, help="Target: mean FLOPs relative to last exit, e.g. 0.6 (maximise accuracy)."
    ),
    confidence: float | None = typer.Option(
        None, help="Risk control (with --max-accuracy-drop): hold the drop with probability >= this, e.g. 0.9."
    ),
    method: str | None = typer.Option(
        None,
        help="Accuracy target without --confidence: cross-fit (default; the expected held-out drop is the target) "
        "or in-sample (the drop on this trace is the target; reads optimistic on new data).",
    ),
    folds: int = typer.Option(5, help="Cross-fit: number of folds."),
    repeats: int = typer.Option(
        1, help="Cross-fit: repeat the folds this many times (new random folds; steadier, proportionally slower)."
    ),
    path_fraction: float = typer.Option(0.3, help="Risk control: share of the trace used to order the candidates."),
    risk_path: str = typer.Option(
        "frontier", help="Risk control: candidate sequence, frontier (default) or interpolate (the earlier one)."
    ),
    path_trace: Path | None = typer.Option(
        None,
        help="A trace of the same model on other samples (its training split: `distree trace --split train`). "
        "Cross-fit / in-sample: choose only along the line of thresholds cheapest on it (more saving at the same "
        "held-out drop). Risk control: order the candidates on it instead of a --path-fraction of --trace, which "
        "then tests on all of it.",
    ),
    seed: int = typer.Option(0, help="Seed of the cross-fit folds, the risk-control split and --check-splits."),
    check_splits: int = typer.Option(
        0,
        help="Also repeat the calibration on N random splits of the trace (calibrate on --check-fraction, score on "
        "the rest) and print the held-out drop and saving over them.",
    ),
    check_fraction: float = typer.Option(0.5, help="--check-splits: share of the trace each split calibrates on."),
    out: Path = typer.Option(..., help="Output policy file (JSON)."),
) -> None:
    """Calibrate a policy's thresholds on validation data; write the policy file the runtime and simulator load."""
    from ..calibration import calibrate
    from ..policies import DEFAULT_POLICY, create_default_policy, create_policy
    from ..trace import TraceError, load_trace

    tr = guarded(lambda: load_trace(trace), TraceError)
    path_tr = guarded(lambda: load_trace(path_trace), TraceError) if path_trace is not None else None
    if tr.meta.get("split") == "test":
        warn("calibrating on a test trace; calibrate on validation data, test on test")
    params = parse_params(param)
    name = policy or DEFAULT_POLICY
    pol = guarded(
        lambda: (
            create_default_policy(tr.num_nodes, **params)
            if name == DEFAULT_POLICY
            else create_policy(name, tr.num_nodes, **params)
        )
    )
    cal = guarded(
        lambda: calibrate(
            pol,
            tr,
            max_drop_pp=max_accuracy_drop,
            flops_budget=flops_budget,
            confidence=confidence,
            path_fraction=path_fraction,
            seed=seed,
            method=method,
            folds=folds,
            repeats=repeats,
            risk_path=risk_path,
            path_trace=path_tr,
        )
    )
    cal.save(out)
    v = cal.calibration["validation"]
    th = ", ".join("inf" if t == float("inf") else f"{t:.4g}" for t in cal.thresholds[:-1])
    console.print(f"{cal.name} {cal.params}: thresholds [{th}] (last node always exits)")
    console.print(
        f"validation: accuracy {100 * v['accuracy']:.2f}% (last exit {100 * v['last_exit_accuracy']:.2f}%), "
        f"drop {v['drop_pp']:+.2f} pp, FLOPs {v['rel_flops']:.3f} of last exit (saving {100 * v['saving']:.1f}%)"
    )
    cf = cal.calibration.get("cross_fit")
    if cf:
        it = cf["internal_target_pp"]
        reps = f" x {cf['repeats']} repeats" if cf.get("repeats", 1) > 1 else ""
        if "path_candidates" in cf:
            reps += f", along {cf['path_candidates']} thresholds of the path trace"
        console.print(
            f"cross-fit ({cf['folds']} folds{reps}): expected held-out drop {cf['expected_drop_pp']:+.2f} pp "
            f"(measured {cf['held_out_drop_pp']:+.2f}, sd {cf['held_out_drop_pp_sd']:.2f} over folds of "
            f"{tr.num_samples // cf['folds']}), saving {100 * cf['held_out_saving']:.1f}%; internal target "
            + (f"{it:+.2f} pp" if it is not None else "none met it: never exit early")
        )
        if path_tr is None:
            console.print(
                "  (with a trace of the model's training split, --path-trace TRAIN_TRACE fits along its thresholds: "
                "on some models more saving at the same held-out drop, on others a higher drop; compare both with "
                "experiments/calibration_splits.py; `distree trace --split train`)"
            )
    risk = cal.calibration.get("risk")
    if risk:
        console.print(
            f"risk control: drop <= {risk['drop_upper_bound_pp']:.2f} pp with probability >= {confidence} "
            f"({risk['certified'] - 1} of {risk['tested']} early-exit candidates certified on {risk['n_test']} "
            f"samples, ordered on {risk['n_path']} of {'the path trace' if path_tr is not None else 'this trace'})"
        )
    console.print(f"calibrated in {cal.calibration['seconds']:.2f}s; policy file: {out}")
    if check_splits:
        _check_splits(cal, pol, tr, check_splits, check_fraction, seed, path_tr)


def _check_splits(cal: Any, pol: Any, tr: Any, n: int, fraction: float, seed: int, path_tr: Any = None) -> None:
    from rich.table import Table

    from ..calibration import check_splits, problem_for

    if not pol.tunable:
        console.print(f"--check-splits: {pol.name} has no tunable thresholds; nothing to check")
        return
    rec = cal.calibration
    tgt = rec["target"]
    kw: dict[str, Any] = {"max_drop_pp": tgt.get("max_accuracy_drop_pp"), "flops_budget": tgt.get("flops_budget")}
    if "confidence" in tgt:
        kw["confidence"] = tgt["confidence"]
        kw["path_fraction"] = rec["risk"]["path_fraction"] or 0.3
        kw["risk_path"] = rec["risk"].get("path", "frontier")
    elif rec["method"] in ("cross-fit", "in-sample"):
        kw["method"] = rec["method"]
        if "cross_fit" in rec:
            kw["folds"] = rec["cross_fit"]["folds"]
            kw["repeats"] = rec["cross_fit"]["repeats"]
    if path_tr is not None and "max_accuracy_drop_pp" in tgt:
        kw["path_prob"] = problem_for(pol, path_tr)
    res = guarded(lambda: check_splits(problem_for(pol, tr), n, fraction=fraction, seed=seed, **kw))
    s = res.summary()
    what = (
        f"drop <= {tgt['max_accuracy_drop_pp']} pp"
        if "max_accuracy_drop_pp" in tgt
        else f"FLOPs <= {tgt['flops_budget']}"
    )
    table = Table(
        title=f"{n} random splits: calibrate ({res.method}, {what}) on {res.n_calibrate} samples, "
        f"score on the other {res.n_held_out}",
    )
    table.add_column("held out", justify="left")
    for c in ("mean", "p25", "p50", "p75", "p90"):
        table.add_column(c, justify="right")
    d, sv, cd = s["held_out_drop_pp"], s["held_out_saving"], s["calibration_drop_pp"]
    table.add_row("drop pp", *(f"{d[c]:+.2f}" for c in ("mean", "p25", "p50", "p75", "p90")))
    table.add_row("saving %", *(f"{100 * sv[c]:.1f}" for c in ("mean", "p25", "p50", "p75", "p90")))
    table.add_row("(drop on the calibration part)", *(f"{cd[c]:+.2f}" for c in ("mean", "p25", "p50", "p75", "p90")))
    console.print(table)
    console.print(
        f"over the target on {100 * s['fraction_over_target']:.0f}% of the splits "
        f"({int(round(s['fraction_over_target'] * n))} of {n})"
    )


@app.command("policies")
def policies_cmd() -> None:
    """List the exit policies."""
    from ..policies import DEFAULT_POLICY, create_policy, list_policies

    for n in list_policies():
        p = create_policy(n, 2)
        tags = [t for t, on in (("default", n == DEFAULT_POLICY), ("not deployable", not p.deployable)) if on]
        console.print(f"{n}" + (f"  ({', '.join(tags)})" if tags else ""))
