"""``distree simulate``, ``distree sweep``, ``distree profile-device``: the edge-cluster simulator."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import typer

from . import app
from ._common import console, fail, guarded, progress_bar

POLICY_HELP = (
    "Policy file (from `distree calibrate`), registered policy name, or a folder of policy files; "
    "repeat or separate with commas for several."
)


def _expand_policies(specs: list[str]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        for part in (s.strip() for s in spec.split(",")):
            if not part:
                continue
            p = Path(part)
            if p.is_dir():
                files = sorted(p.glob("*.json"))
                if not files:
                    fail(f"policy folder {p} holds no *.json policy files")
                out.extend(str(f) for f in files)
            else:
                out.append(part)
    if not out:
        fail("give at least one --policy")
    return out


def _load(scenario: Path, trace: Path, policies: list[str], requests: int | None, seed: int | None):
    from ..policies import ExitPolicy
    from ..sim import ScenarioError, load_scenario, resolve_policy
    from ..trace import TraceError, load_trace

    sc = guarded(lambda: load_scenario(scenario), ScenarioError)
    tr = guarded(lambda: load_trace(trace), TraceError)
    if requests is not None:
        if requests < 1:
            fail("--requests must be >= 1")
        sc.workload.requests = requests
    if seed is not None:
        sc.seed = seed
    pols: list[ExitPolicy] = []
    names: list[str] = []
    for spec in _expand_policies(policies):
        pol = guarded(partial(resolve_policy, spec, tr.num_nodes))
        label = pol.name if pol.name not in names else f"{pol.name}:{Path(spec).stem}"
        names.append(label)
        pols.append(pol)
    return sc, tr, pols, names


def _parse_vary(items: list[str]) -> list[tuple[str, list[float]]]:
    from ..sim import SWEEP_VARIABLES

    out = []
    for item in items:
        if "=" not in item:
            fail(f"--vary needs VARIABLE=v1,v2,...; got {item!r} (variables: {', '.join(SWEEP_VARIABLES)})")
        var, vals = item.split("=", 1)
        var = var.strip()
        if var.partition(":")[0] not in SWEEP_VARIABLES:
            fail(f"unknown sweep variable {var!r}; use one of {', '.join(SWEEP_VARIABLES)} (replicas:TIER)")
        if var.startswith("replicas") and not var.partition(":")[2].isdigit():
            fail(f"--sweep {var}: give the tier, e.g. replicas:2=1,2,3 (tier 2's replica counts)")
        try:
            values = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            fail(f"--vary {var}: values must be numbers, got {vals!r}")
        if not values:
            fail(f"--vary {var}: give at least one value")
        out.append((var, values))
    return out


@app.command("simulate")
def simulate_cmd(
    scenario: Path = typer.Option(..., help="Scenario file (TOML); see examples/scenarios/."),
    trace: Path = typer.Option(..., help="Trace file (*.trace.safetensors), ideally of the test split."),
    policy: list[str] = typer.Option(..., help=POLICY_HELP),
    engine: str | None = typer.Option(None, help="auto | simpy | vector (default: the scenario's)."),
    requests: int | None = typer.Option(None, help="Override the scenario's number of requests."),
    seed: int | None = typer.Option(None, help="Override the scenario's seed."),
    out: Path = typer.Option(Path("runs/sim"), help="Output folder: records, tables, plots."),
    sweep: list[str] = typer.Option(
        [],
        help="Also sweep: VARIABLE=v1,v2,... (deadline_s | load | fluctuation | replicas:TIER, e.g. replicas:2=1,2,3).",
    ),
    rate: float | None = typer.Option(None, help="Override the scenario's offered load (requests/s)."),
    p99_ms: float | None = typer.Option(
        None, help="With a replicas sweep: report the fewest replicas whose p99 latency is at most this."
    ),
) -> None:
    """Simulate the scenario once per policy; write per-request records, a table and plots."""
    from ..sim import ScenarioError, markdown_table, node_table, plot_results, simulate

    sc, tr, pols, names = _load(scenario, trace, policy, requests, seed)
    if rate is not None:
        if rate <= 0 or sc.workload.arrival not in ("poisson", "deterministic"):
            fail("--rate needs a value > 0 and a scenario with poisson or deterministic arrivals")
        sc.workload.rate_per_s = rate
    results = []
    with progress_bar() as p:
        for pol, name in zip(pols, names, strict=True):
            task = p.add_task(f"{sc.name} · {name}", total=sc.workload.requests, info="")

            def on_progress(done: int, total: int, task: Any = task) -> None:
                p.update(task, completed=done, total=total)

            res = guarded(partial(simulate, sc, tr, pol, engine=engine, progress=on_progress), ScenarioError)
            res.policy = name
            p.update(task, info=f"{res.engine}, {res.wall_s:.2f} s")
            results.append(res)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for res in results:
        res.save(out, stem=f"{sc.name}.{res.policy.replace(':', '_')}")
        rows.append(res.aggregates())
    md = markdown_table(rows)
    nodes_md = "\n\n".join(f"**{r['policy']}**\n\n{node_table(r)}" for r in rows)
    (out / f"{sc.name}.md").write_text(f"# {sc.name}\n\n{md}\n\n## Nodes\n\n{nodes_md}\n")
    (out / f"{sc.name}.json").write_text(json.dumps(rows, indent=2, default=str))
    png = plot_results(results, out / f"{sc.name}.png")
    console.print(md)
    for r in rows:
        extra = f", {r['events_per_s']:.0f} events/s" if "events_per_s" in r else ""
        console.print(f"{r['policy']}: {r['engine']} engine, {r['wall_s']:.2f} s{extra}")
    console.print(f"tables: {out / (sc.name + '.md')}, {out / (sc.name + '.json')}; plot: {png}")
    if sweep:
        _run_sweeps(sc, tr, pols, names, _parse_vary(sweep), engine, out, p99_ms)
    elif p99_ms is not None:
        fail("--p99-ms answers a replica sweep: add --sweep replicas:TIER=1,2,3,...")


def _fleet_answer(sc, var: str, rows: list[dict[str, Any]], names: list[str], p99_ms: float) -> None:
    from ..sim import smallest_meeting
    from ..sim.workload import offered_load

    tier = var.partition(":")[2]
    load = offered_load(sc.workload)
    at = f"{load:g} req/s" if load == load else f"{sc.workload.clients} clients"
    for name in names:
        best = smallest_meeting(rows, p99_ms / 1000.0, name)
        if best is None:
            top = max(r["value"] for r in rows if r["policy"] == name)
            console.print(f"{name}: no swept replica count of tier {tier} (up to {top:g}) meets p99 <= {p99_ms:g} ms "
                          f"at {at}", soft_wrap=True)  # fmt: skip
        else:
            console.print(
                f"{name}: tier {tier} needs {best['value']:g} replicas for {at} at p99 <= {p99_ms:g} ms "
                f"(p99 {best['latency_p99_s'] * 1e3:.1f} ms, mean {best['latency_mean_s'] * 1e3:.1f} ms)",
                style="bold",
                soft_wrap=True,
            )


def _run_sweeps(sc, tr, pols, names, plan, engine, out: Path, p99_ms: float | None = None) -> None:
    from ..sim import ScenarioError, markdown_table, plot_sweep
    from ..sim import sweep as run_sweep

    out.mkdir(parents=True, exist_ok=True)
    with progress_bar() as p:
        for var, values in plan:
            task = p.add_task(f"sweep {var}", total=len(values) * len(pols), info="")

            def on_run(row: dict[str, Any], task: Any = task) -> None:
                p.advance(task)
                p.update(task, info=f"{row['policy']} @ {row['value']:g}")

            rows = guarded(partial(run_sweep, sc, tr, pols, var, values, engine=engine, on_run=on_run), ScenarioError)
            # label rows by the CLI names (two files of one policy stay apart)
            for j, row in enumerate(rows):
                row["policy"] = names[j % len(pols)]
            stem = f"{sc.name}.sweep-{var.replace(':', '')}"
            (out / f"{stem}.json").write_text(json.dumps(rows, indent=2, default=str))
            md = markdown_table(rows, extra=["value"])
            (out / f"{stem}.md").write_text(f"# {sc.name}: sweep of {var}\n\n{md}\n")
            plot_sweep(rows, var, out / f"{stem}.png")
            console.print(var, style="bold")
            console.print(md)
            console.print(f"sweep {var}: {out / (stem + '.md')}, {out / (stem + '.png')}")
            if p99_ms is not None and var.startswith("replicas"):
                _fleet_answer(sc, var, rows, names, p99_ms)


@app.command("sweep")
def sweep_cmd(
    scenario: Path = typer.Option(..., help="Scenario file (TOML)."),
    trace: Path = typer.Option(..., help="Trace file (*.trace.safetensors)."),
    policy: list[str] = typer.Option(..., help=POLICY_HELP),
    vary: list[str] = typer.Option(
        ..., help="VARIABLE=v1,v2,...: deadline_s (seconds), load (x offered rate), fluctuation (intensity 0..1)."
    ),
    engine: str | None = typer.Option(None, help="auto | simpy | vector (default: the scenario's)."),
    requests: int | None = typer.Option(None, help="Override the scenario's number of requests."),
    seed: int | None = typer.Option(None),
    out: Path = typer.Option(Path("runs/sim"), help="Output folder."),
) -> None:
    """Accuracy, deadline-miss rate and p95 latency against deadline / load / fluctuation, every policy."""
    plan = _parse_vary(vary)
    sc, tr, pols, names = _load(scenario, trace, policy, requests, seed)
    _run_sweeps(sc, tr, pols, names, plan, engine, out)


@app.command("profile-device")
def profile_device_cmd(
    checkpoint: Path | None = typer.Option(
        None, help="Checkpoint directory (model.safetensors + model.json); optional with an onnx backend."
    ),
    out: Path = typer.Option(..., help="Output device profile (JSON)."),
    repeats: int = typer.Option(30, help="Timed runs per segment (median)."),
    warmup: int = typer.Option(5, help="Untimed runs first."),
    batch_sizes: str = typer.Option("1,8", help="Batch sizes to time (for the batching cost)."),
    threads: int | None = typer.Option(None, help="torch threads / ONNX Runtime intra-op threads (default: theirs)."),
    backend: str = typer.Option("torch", help="What computes the nodes: torch | onnx | onnx-int8."),
    onnx_dir: Path | None = typer.Option(None, help="Export folder for the onnx backends (`distree export`)."),
    providers: str = typer.Option("CPU", help="ONNX Runtime execution providers, in preference order."),
) -> None:
    """Time each segment and exit head of a checkpoint on this machine and write a device profile."""
    from ..backends import BackendError
    from ..checkpoint import CheckpointError
    from ..sim.profile import profile_device

    try:
        bs = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        fail(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}")
    with progress_bar() as p:
        task = p.add_task("profiling", total=None, info="")

        def on_progress(done: int, total: int) -> None:
            p.update(task, completed=done, total=total)

        prof = guarded(
            lambda: profile_device(checkpoint, repeats=repeats, warmup=warmup, batch_sizes=bs, threads=threads,
                                   progress=on_progress, backend=backend, onnx_dir=onnx_dir,
                                   providers=[p.strip() for p in providers.split(",") if p.strip()]),
            CheckpointError,
            BackendError,
        )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(prof, indent=2))
    for i in range(prof["num_nodes"]):
        console.print(
            f"node {i + 1}: segment {prof['segment_s'][i] * 1e3:.3f} ms + head {prof['exit_s'][i] * 1e3:.3f} ms "
            f"= {prof['flops_per_s'][i] / 1e9:.2f} GFLOP/s"
        )
    console.print(f"device profile: {out}")
