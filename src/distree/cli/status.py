"""``distree cluster status``: every node of a spec — reachable, serving, its backend and estimates."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ._common import console, fail, guarded
from .cluster import cluster_app
from .serve import _spec


@cluster_app.command("status")
def cluster_status(
    spec: Path = typer.Option(..., help="Cluster spec (TOML)."),
    timeout_s: float = typer.Option(3.0, help="Wait this long for each node's answer."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per node instead of a table."),
    cert: Path | None = typer.Option(None, help="Certificate for mutual TLS (an operator's; default: the spec's)."),
    key: Path | None = typer.Option(None, help="Key for mutual TLS (default: the spec's)."),
) -> None:
    """Ask every node of the spec (from any machine that reaches them) for its health and state."""
    import grpc

    from ..runtime import node_info, spec_client_tls, wait_healthy
    from ..runtime.auth import chain_token

    s = _spec(spec)
    tls = guarded(lambda: spec_client_tls(s, cert, key))
    token = guarded(lambda: chain_token(s))
    rows = []
    for n in s.nodes:
        row: dict = {"node": n.segment, "address": n.address, "serving": False}
        if wait_healthy(n.address, tls=tls, timeout_s=timeout_s):
            row["serving"] = True
            try:
                info = node_info(n.address, tls=tls, timeout_s=timeout_s, chain_token=token)
                stats = json.loads(info.stats_json or "{}")
                row.update(
                    backend=stats.get("backend", "?"),
                    model=info.model,
                    policy=info.policy,
                    est_compute_ms=round(info.est_compute_s * 1e3, 3),
                    est_queue_ms=round(info.est_queue_s * 1e3, 3),
                    rows=stats.get("counts", {}).get("rows", 0),
                    degraded=sum(stats.get("degraded", {}).values()),
                )
            except grpc.RpcError as e:
                row["error"] = f"{e.code().name}: {e.details()}"
        rows.append(row)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
    else:
        t = Table(title=f"{s.path.name}: {sum(r['serving'] for r in rows)} of {len(rows)} nodes serving")
        cols = ["node", "address", "serving", "backend", "model", "policy", "est_compute_ms", "rows", "degraded"]
        for c in cols:
            t.add_column(c.replace("_", " "))
        for r in rows:
            t.add_row(*[str(r.get(c, "")) if c != "serving" else ("yes" if r["serving"] else "NO") for c in cols])
        console.print(t)
    if not all(r["serving"] for r in rows):
        fail("not every node is serving", 1)
