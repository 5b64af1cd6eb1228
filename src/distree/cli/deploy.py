"""``distree deploy k8s``: Kubernetes manifests and a Containerfile for a cluster spec."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from ._common import console, fail, guarded

deploy_app = typer.Typer(help="Deploy a cluster spec onto a fleet manager.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")


def _per_tier(items: list[str], what: str) -> dict[int, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip().isdigit() or not v.strip():
            fail(f"--{what} takes TIER=VALUE (e.g. 2=jetson), got {item!r}")
        out[int(k)] = v.strip()
    return out


@deploy_app.command("k8s")
def deploy_k8s(
    spec: Path = typer.Option(..., help="Cluster spec (TOML); replicas per tier become Deployment replicas."),
    image: str = typer.Option(..., help="Node image (build it with the Containerfile written next to the manifests)."),
    out: Path = typer.Option(..., help="Folder for the manifests and the Containerfile."),
    name: str = typer.Option("distree", help="Name prefix of every resource (a DNS label)."),
    namespace: str = typer.Option("default", help="Namespace of the resources."),
    pool_label: str = typer.Option("distree.io/pool", help="Node label that names a device pool."),
    pool: list[str] = typer.Option([], help="TIER=VALUE: the pool of a tier (default tier-K); repeat."),
    memory: str = typer.Option("1Gi", help="Memory request and limit per node pod."),
    cpu: str | None = typer.Option(None, help="CPU request per node pod (default: the spec's threads)."),
    backend: list[str] = typer.Option([], help="TIER=torch|onnx: a tier's backend label (default: the spec's)."),
    validate: bool = typer.Option(True, help="Check every manifest against the Kubernetes schemas (offline)."),
) -> None:
    """Write per tier a Deployment + headless Service, a ConfigMap (spec + policy) and a Containerfile."""
    from ..deploy import DeployError, K8sOptions, validate_manifests, write_manifests
    from ..runtime import SpecError, load_spec

    s = guarded(lambda: load_spec(spec), SpecError)
    opts = K8sOptions(image=image, name=name, namespace=namespace, pool_label=pool_label, memory=memory, cpu=cpu,
                      pools=_per_tier(pool, "pool"), backends=_per_tier(backend, "backend"))  # fmt: skip
    paths = guarded(lambda: write_manifests(s, opts, out), DeployError, OSError)
    for p in paths:
        console.print(f"wrote {p}")
    if validate:
        checked = guarded(lambda: validate_manifests(paths), DeployError)
        console.print(f"{len(checked)} resources valid against the Kubernetes schemas (offline, strict)")
    reps = ", ".join(f"tier {k}: {len(s.replicas(k))}" for k in range(1, s.num_nodes + 1))
    console.print(f"replicas: {reps}; apply with `kubectl apply -f {out}`", soft_wrap=True)
