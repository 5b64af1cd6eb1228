"""``distree serve`` / ``infer`` / ``certs``: the distributed runtime (``cluster up|down``: cli/cluster.py)."""

from __future__ import annotations

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

certs_app = typer.Typer(help="Development CA and certificates for TLS / mutual TLS.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


def _spec(path: Path):
    from ..runtime import SpecError, load_spec

    return guarded(lambda: load_spec(path), SpecError)


@app.command("serve")
def serve_cmd(
    spec: Path = typer.Option(..., help="Cluster spec (TOML)."),
    node: int = typer.Option(..., help="Which node of the spec to run (1-based: node K runs segment K)."),
    replica: int = typer.Option(1, help="Which replica of node K (1-based, in the spec's order)."),
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
    guarded(lambda: s.node(node, replica))
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    logs.configure(level, json_lines=not plain_logs, static={"node": node, "replica": replica})
    guarded(lambda: run_node(s, node, grace_s=grace_s, replica=replica), CheckpointError, OSError)


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
    address: list[str] = typer.Option(
        [], help="Override node 1's addresses from the spec (repeat for several replicas)."
    ),
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
    targets = address or s.addresses(1)  # every replica of node 1: refused calls are retried on another
    where = ", ".join(targets)
    with ClusterClient(targets, tls=tls, model_name=s.model_name, max_message_bytes=s.max_message_bytes) as client:
        t0 = time.perf_counter()
        res = client.infer_many(
            [xi[None] for xi in x], concurrency=concurrency, deadline_s=deadline_ms / 1000 if deadline_ms else None
        )
        wall = time.perf_counter() - t0
    t = Table(title=f"{len(res)} requests to {where}")
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

    who = tier if role == "node" else name
    if who is None:
        fail("--role node needs --tier K (the segment the node serves)")
    ident = guarded(lambda: identity_uri(role, who))
    cp, kp = guarded(lambda: issue_cert(ca_dir, name, host, days, out, identity=ident))
    console.print(f"certificate: {cp} ({ident})\nkey: {kp}")
