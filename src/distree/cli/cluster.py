"""``distree cluster up|down``: every node of a spec as local processes under one supervisor."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from . import app
from ._common import console, fail, guarded, warn

cluster_app = typer.Typer(help="Start or stop every node of a cluster spec on this machine.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


def _print_table(spec_path: Path, s, pids: dict[str, int]) -> None:
    mode = "plaintext" if s.tls is None else "mutual TLS" if s.tls.client_auth else "TLS"
    reps = len(s.nodes) - s.num_nodes
    t = Table(title=f"cluster {spec_path} ({s.num_nodes} nodes{f', {reps} more replicas' if reps else ''}, {mode})")
    for col in ("node", "pid", "address", "metrics", "role"):
        t.add_column(col)
    for k, r, n in s.members():
        name = s.node_name(k, r)
        role = "Open Inference Protocol (KServe v2) endpoint" if k == 1 else "chain node"
        metrics = f"http://{n.listen.rpartition(':')[0]}:{n.metrics_port}/metrics" if n.metrics_port else "-"
        t.add_row(name, str(pids.get(name, "-")), n.address, metrics, role)
    console.print(t)
    console.print(Text.assemble(f"model {s.model_name!r} at ", (", ".join(s.addresses(1)), "bold")))
    if s.http_port:
        from ..runtime.rest import http_url

        console.print(Text.assemble("HTTP/REST at ", (http_url(s), "bold")))


@cluster_app.command("up")
def cluster_up(
    spec: Path = typer.Option(..., help="Cluster spec (TOML)."),
    log_dir: Path | None = typer.Option(None, help="Write each node's log to LOG_DIR/nodeK.log (nodeK.R.log)."),
    detach: bool = typer.Option(False, help="Return once every node is ready (stop with `cluster down`)."),
    timeout_s: float = typer.Option(120.0, help="How long to wait for every node to become ready."),
    metrics_port: int = typer.Option(0, help="Serve the supervisor's metrics (restarts per node) on this port."),
    grace_s: float = typer.Option(15.0, help="On stop, how long a node may drain before it is killed."),
) -> None:
    """Start every node of the spec as a local process under a supervisor that restarts a node that
    exits; wait until all are healthy and print the endpoints."""
    from ..runtime import LocalCluster, SpecError, load_spec
    from ..runtime.supervisor import Supervision, running_pids, start_detached

    s = guarded(lambda: load_spec(spec), SpecError)
    if s.pid_file.is_file():
        alive = guarded(lambda: running_pids(s))
        if alive:
            fail(
                f"{s.pid_file} lists running processes ({', '.join(f'{k}: {v}' for k, v in alive.items())}): a "
                f"cluster of this spec is running; `distree cluster down --spec {spec}` first"
            )
        warn(f"removing the stale pid file {s.pid_file} (none of its processes runs)")
        s.pid_file.unlink()
    if detach:
        pid, log_file = guarded(
            lambda: start_detached(
                s, log_dir=log_dir, timeout_s=timeout_s, metrics_port=metrics_port, grace_s=grace_s
            ),  # fmt: skip
            RuntimeError,
            TimeoutError,
        )
        _print_table(spec, s, guarded(lambda: running_pids(s)))
        console.print(f"supervisor pid {pid} (log {log_file}) restarts nodes that exit; pids in {s.pid_file}")
        console.print(f"stop with `distree cluster down --spec {spec}`")
        return
    cluster = LocalCluster(s, log_dir=log_dir)
    guarded(lambda: cluster.start(timeout_s=timeout_s), RuntimeError, TimeoutError)
    sup = Supervision(cluster, metrics_port)
    # the supervisor's pid enters the pid file only now: `cluster up --detach` returns once it is there,
    # so a node that exits from then on is restarted (one that exits while starting fails the start)
    cluster.supervisor_pid = os.getpid()
    cluster.write_pids()
    _print_table(spec, s, cluster.pids())
    if metrics_port:
        console.print(f"supervisor metrics: http://127.0.0.1:{metrics_port}/metrics")
    console.print("nodes that exit are restarted; Ctrl-C (or `distree cluster down`) stops the cluster", soft_wrap=True)

    def on_event(e) -> None:
        if e.pid is None:
            console.print(f"node {e.name} exited with code {e.code}; restart in {e.wait_s:.1f} s", style="yellow")
        else:
            console.print(f"node {e.name} restarted (restart {e.restarts}), pid {e.pid}", style="yellow")

    try:
        sup.run(on_event)
    finally:
        codes = cluster.stop(grace_s)
        restarts = cluster.restarts
        console.print(
            "stopped: "
            + ", ".join(
                f"node {name} (exit {c}" + (f", {n} restarts" if (n := restarts.get(_key(name), 0)) else "") + ")"
                for name, c in codes.items()
            ),
            soft_wrap=True,
        )


def _key(name: str) -> tuple[int, int]:
    k, _, r = name.partition(".")
    return int(k), int(r or 1)


@cluster_app.command("down")
def cluster_down(
    spec: Path = typer.Option(..., help="Cluster spec (TOML) whose nodes to stop."),
    timeout_s: float = typer.Option(15.0, help="Grace period before a node is killed."),
) -> None:
    """Stop a cluster started with `distree cluster up`: its supervisor and every node it runs, restarted
    ones included (SIGTERM: nodes drain, then exit; killed after the grace period)."""
    from ..runtime import SpecError, load_spec, stop_from_pid_file

    s = guarded(lambda: load_spec(spec, check_files=False), SpecError)
    res = guarded(lambda: stop_from_pid_file(s, timeout_s))
    console.print(", ".join(f"node {k}: {v}" for k, v in sorted(res.items())))
