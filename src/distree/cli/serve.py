"""``distree serve`` / ``cluster up|down`` / ``infer`` / ``certs``: the distributed runtime."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table
from rich.text import Text

from . import app
from ._common import console, fail, guarded

if TYPE_CHECKING:
    import numpy as np

cluster_app = typer.Typer(help="Start or stop every node of a cluster spec on this machine.", no_args_is_help=True)
certs_app = typer.Typer(help="Development CA and certificates for TLS / mutual TLS.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(certs_app, name="certs")


def _spec(path: Path):
    from ..runtime import SpecError, load_spec

    return guarded(lambda: load_spec(path), SpecError)


@app.command("serve")
def serve_cmd(
    spec: Path = typer.Option(..., help="Cluster spec (TOML)."),
    node: int = typer.Option(..., help="Which node of the spec to run (1-based: node K runs segment K)."),
    grace_s: float = typer.Option(10.0, help="On SIGTERM/Ctrl-C, wait this long for in-flight requests."),
    plain_logs: bool = typer.Option(False, help="Plain-text logs instead of JSON lines."),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
) -> None:
    """Run one node: segment K + exit K of the checkpoint, the policy, and the gRPC services."""
    import logging

    from ..checkpoint import CheckpointError
    from ..runtime import logs
    from ..runtime.server import run_node

    s = _spec(spec)
    guarded(lambda: s.node(node))
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    logs.configure(level, json_lines=not plain_logs, static={"node": node})
    guarded(lambda: run_node(s, node, grace_s=grace_s), CheckpointError, OSError)


@cluster_app.command("up")
def cluster_up(
    spec: Path = typer.Option(..., help="Cluster spec (TOML)."),
    log_dir: Path | None = typer.Option(None, help="Write each node's log to LOG_DIR/nodeK.log."),
    detach: bool = typer.Option(False, help="Return once every node is ready (stop with `cluster down`)."),
    timeout_s: float = typer.Option(120.0, help="How long to wait for every node to become ready."),
) -> None:
    """Start every node of the spec as a local process, wait until all are healthy, print endpoints."""
    from ..runtime import LocalCluster

    s = _spec(spec)
    if s.pid_file.is_file():
        fail(f"{s.pid_file} exists: a cluster of this spec may be running; `distree cluster down --spec {spec}` first")
    cluster = LocalCluster(s, log_dir=log_dir)
    guarded(lambda: cluster.start(timeout_s=timeout_s), RuntimeError, TimeoutError)
    mode = "plaintext" if s.tls is None else "mutual TLS" if s.tls.client_auth else "TLS"
    t = Table(title=f"cluster {spec} ({s.num_nodes} nodes, {mode})")
    for col in ("node", "pid", "address", "metrics", "role"):
        t.add_column(col)
    for n in s.nodes:
        role = "Open Inference Protocol (KServe v2) endpoint" if n.segment == 1 else "chain node"
        metrics = f"http://{n.listen.rpartition(':')[0]}:{n.metrics_port}/metrics" if n.metrics_port else "-"
        t.add_row(str(n.segment), str(cluster.procs[n.segment].pid), n.address, metrics, role)
    console.print(t)
    console.print(Text.assemble(f"model {s.model_name!r} at ", (s.nodes[0].address, "bold")))
    if s.http_port:
        from ..runtime.rest import http_url

        console.print(Text.assemble("HTTP/REST at ", (http_url(s), "bold")))
    if detach:
        console.print(f"pids in {s.pid_file}; stop with `distree cluster down --spec {spec}`")
        return
    console.print("Ctrl-C stops the cluster")
    stop = {"now": False}

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        reported: set[int] = set()
        while not stop["now"] and s.pid_file.exists():  # `cluster down` removes the pid file
            time.sleep(0.3)
            for k, p in cluster.procs.items():
                if p.poll() is not None and k not in reported and s.pid_file.exists():
                    console.print(f"node {k} exited with code {p.returncode}", style="yellow")
                    reported.add(k)
    finally:
        codes = cluster.stop()
        console.print("stopped: " + ", ".join(f"node {k} (exit {c})" for k, c in codes.items()))


@cluster_app.command("down")
def cluster_down(
    spec: Path = typer.Option(..., help="Cluster spec (TOML) whose nodes to stop."),
    timeout_s: float = typer.Option(15.0, help="Grace period before a node is killed."),
) -> None:
    """Stop a cluster started with `distree cluster up` (SIGTERM: nodes drain, then exit)."""
    from ..runtime import SpecError, load_spec, stop_from_pid_file

    s = guarded(lambda: load_spec(spec, check_files=False), SpecError)
    res = guarded(lambda: stop_from_pid_file(s, timeout_s))
    console.print(", ".join(f"node {k}: {v}" for k, v in sorted(res.items())))


def _load_images(paths: list[Path], shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np
    from PIL import Image

    c, h, w = shape
    out = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"no image file {p}")
        if p.suffix == ".npy":
            a = np.load(p)
            a = a[None] if a.ndim == 3 else a
            if a.shape[1:] != (c, h, w):
                raise ValueError(f"{p}: array shape {a.shape} does not match the model input (B, {c}, {h}, {w})")
            out.extend(list(a))
            continue
        img = Image.open(p).convert("L" if c == 1 else "RGB").resize((w, h))
        a = np.asarray(img, dtype=np.uint8)
        out.append(a[None] if c == 1 else a.transpose(2, 0, 1))
    arr = np.stack(out)
    return arr if arr.dtype != np.float64 else arr.astype(np.float32)


def _model_facts(s: Any) -> dict[str, Any]:
    """Input shape, classes and class count: from the checkpoint, or node 1's ONNX export manifest."""
    if s.checkpoint is not None:
        from ..checkpoint import read_sidecar

        return read_sidecar(s.checkpoint)
    from ..backends import read_manifest

    m = read_manifest(s.node_backend(1)[1])
    return {"input_shape": m.input_shape, "classes": m.classes, "num_classes": m.num_classes}


@app.command("infer")
def infer_cmd(
    images: list[Path] = typer.Argument(None, help="Image files (png/jpg/...) or .npy arrays (B, C, H, W)."),
    spec: Path = typer.Option(..., help="Cluster spec (TOML): node 1's address, TLS, model name."),
    dataset: str | None = typer.Option(None, help="Send a dataset split instead of files (e.g. digits)."),
    split: str = typer.Option("test", help="Dataset split with --dataset."),
    data_dir: str | None = typer.Option(None, help="Dataset folder with --dataset."),
    limit: int | None = typer.Option(None, help="Send only the first N samples."),
    deadline_ms: float | None = typer.Option(None, help="Per-request QoS deadline (ms)."),
    concurrency: int = typer.Option(8, help="Requests in flight at once."),
    address: str | None = typer.Option(None, help="Override node 1's address from the spec."),
    cert: Path | None = typer.Option(None, help="Client certificate for mutual TLS (default: the spec's)."),
    key: Path | None = typer.Option(None, help="Client key for mutual TLS (default: the spec's)."),
    show: int = typer.Option(20, help="Print at most this many per-request rows."),
) -> None:
    """Send requests to node 1 and print each answer, its exit node and latency."""
    import grpc
    import numpy as np

    from ..runtime import ClusterClient, spec_client_tls

    s = _spec(spec)
    side = guarded(lambda: _model_facts(s))
    shape = tuple(side["input_shape"])
    classes = side.get("classes") or [str(i) for i in range(side["num_classes"])]
    labels = None
    if dataset:
        from ..data import DatasetError, load_split

        ds = guarded(lambda: load_split(dataset, split, data_dir), DatasetError)
        x = ds.images.numpy()
        labels = ds.labels.numpy()
        names = [f"{dataset}/{split}#{i}" for i in range(len(x))]
    elif images:
        x = guarded(lambda: _load_images(images, shape))
        names = [str(p) for p in images]
    else:
        fail("give image files or --dataset NAME")
    if limit is not None:
        x, names = x[:limit], names[:limit]
        labels = labels[:limit] if labels is not None else None
    tls = guarded(lambda: spec_client_tls(s, cert, key))
    with ClusterClient(
        address or s.nodes[0].address, tls=tls, model_name=s.model_name, max_message_bytes=s.max_message_bytes
    ) as client:
        t0 = time.perf_counter()
        res = client.infer_many(
            [xi[None] for xi in x], concurrency=concurrency, deadline_s=deadline_ms / 1000 if deadline_ms else None
        )
        wall = time.perf_counter() - t0
    t = Table(title=f"{len(res)} requests to {address or s.nodes[0].address}")
    for col in ("input", "answer", "p", "exit node", "degraded", "latency ms"):
        t.add_column(col)
    errors = [r for r in res if isinstance(r, grpc.RpcError)]
    ok = [r for r in res if not isinstance(r, grpc.RpcError)]
    for name, r in list(zip(names, res, strict=True))[:show]:
        if isinstance(r, grpc.RpcError):
            t.add_row(name, Text(f"{r.code().name}: {r.details()}", style="red"), "", "", "", "")
            continue
        p = int(r.predictions[0])
        t.add_row(
            name,
            classes[p] if p < len(classes) else str(p),
            f"{float(r.probs[0, p]):.3f}",
            str(int(r.exit_node[0])),
            r.reasons[0] if r.degraded[0] else "",
            f"{r.latency_s * 1e3:.2f}",
        )
    console.print(t)
    if ok:
        lat = np.array([r.latency_s for r in ok]) * 1e3
        exits = np.concatenate([r.exit_node for r in ok])
        counts = ", ".join(f"node {e}: {int((exits == e).sum())}" for e in range(1, s.num_nodes + 1))
        console.print(f"exits: {counts}; degraded: {int(sum(r.degraded.sum() for r in ok))}")
        console.print(
            f"latency ms: median {np.median(lat):.2f}, p90 {np.percentile(lat, 90):.2f}, "
            f"max {lat.max():.2f}; throughput {len(ok) / wall:.1f} req/s"
        )
        if labels is not None and len(ok) == len(res):
            preds = np.array([int(r.predictions[0]) for r in ok])
            console.print(f"accuracy: {(preds == labels).mean() * 100:.2f}%")
    if errors:
        fail(f"{len(errors)} of {len(res)} requests failed (first: {errors[0].code().name}: {errors[0].details()})", 1)


@certs_app.command("create")
def certs_create(
    out: Path = typer.Option(..., help="Folder for ca.pem/ca.key, nodeK.pem/key and client.pem/key."),
    nodes: int = typer.Option(4, help="How many node certificates."),
    host: list[str] = typer.Option(["127.0.0.1", "localhost"], help="Host names / IPs the certificates are for."),
    days: int = typer.Option(365),
) -> None:
    """Create a development CA plus node and client certificates (do not use the CA key in production)."""
    from ..runtime import create_dev_pki

    paths = guarded(lambda: create_dev_pki(out, nodes, host, days))
    for name, p in paths.items():
        console.print(f"{name}: {p}")
    console.print(
        'spec: [tls] ca = "ca.pem", client_cert = "client.pem", client_key = "client.key"; '
        'per node cert = "nodeK.pem", key = "nodeK.key"'
    )


@certs_app.command("issue")
def certs_issue(
    ca_dir: Path = typer.Option(..., help="Folder holding ca.pem + ca.key."),
    name: str = typer.Option(..., help="File stem of the new certificate (NAME.pem, NAME.key)."),
    host: list[str] = typer.Option(..., help="Host names / IPs the certificate is for."),
    out: Path | None = typer.Option(None, help="Output folder (default: the CA folder)."),
    days: int = typer.Option(365),
    role: str = typer.Option(..., help="node | client | operator: who the certificate's holder is."),
    tier: int | None = typer.Option(None, help="With --role node: the tier (segment) the node serves."),
) -> None:
    """Issue one more certificate from an existing development CA, with its role identity."""
    from ..runtime.tls import identity_uri, issue_cert

    if role == "node" and tier is None:
        fail("--role node needs --tier K (the segment the node serves)")
    ident = guarded(lambda: identity_uri(role, tier if role == "node" else name))
    cp, kp = guarded(lambda: issue_cert(ca_dir, name, host, days, out, identity=ident))
    console.print(f"certificate: {cp} ({ident})\nkey: {kp}")
