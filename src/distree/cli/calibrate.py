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
    path_fraction: float = typer.Option(0.3, help="Risk control: share of the trace used to order the candidates."),
    seed: int = typer.Option(0, help="Risk control: seed of the random split."),
    out: Path = typer.Option(..., help="Output policy file (JSON)."),
) -> None:
    """Calibrate a policy's thresholds on validation data; write the policy file the runtime and simulator load."""
    from ..calibration import calibrate
    from ..policies import DEFAULT_POLICY, create_default_policy, create_policy
    from ..trace import TraceError, load_trace

    tr = guarded(lambda: load_trace(trace), TraceError)
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
    risk = cal.calibration.get("risk")
    if risk:
        console.print(
            f"risk control: drop <= {risk['drop_upper_bound_pp']:.2f} pp with probability >= {confidence} "
            f"({risk['certified'] - 1} of {risk['tested']} early-exit candidates certified on {risk['n_test']} samples)"
        )
    console.print(f"calibrated in {cal.calibration['seconds']:.2f}s; policy file: {out}")


@app.command("policies")
def policies_cmd() -> None:
    """List the exit policies."""
    from ..policies import DEFAULT_POLICY, create_policy, list_policies

    for n in list_policies():
        p = create_policy(n, 2)
        tags = [t for t, on in (("default", n == DEFAULT_POLICY), ("not deployable", not p.deployable)) if on]
        console.print(f"{n}" + (f"  ({', '.join(tags)})" if tags else ""))
