"""Kubernetes manifests for a cluster spec (``distree deploy k8s``).

Per tier K of the spec: a Deployment with as many replicas as the spec lists nodes of segment K
(node selector on the tier's device pool, spread over hosts, resources, gRPC health probes,
Prometheus scrape annotations) and a headless Service, so that tier K-1 resolves every ready
replica of tier K through DNS and balances over them with gRPC's round robin
(:mod:`distree.runtime.balancing`). One ConfigMap holds the spec as the pods see it (one node per
tier, addressed by its Service's DNS name) and the policy file. TLS material is referenced as
Secrets (``<name>-tls-tierK``: ``ca.crt``, ``tls.crt``, ``tls.key``), never written, and so are the
access tokens (``<name>-tokens``: ``chain.token``, ``clients.tokens``). The checkpoint
is part of the node image (:func:`containerfile`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DistreeError
from ..runtime.spec import ClusterSpec
from ..runtime.spec_toml import spec_toml

#: tier K listens on GRPC_PORT + K and serves metrics on METRICS_PORT + K (the spec asks every node of
#: it for its own listen address, as on one host)
GRPC_PORT = 7000
METRICS_PORT = 9100
CONFIG_DIR = "/etc/distree"
TLS_DIR = "/etc/distree/tls"
TOKENS_DIR = "/etc/distree/tokens"  # the Secret <name>-tokens: chain.token, clients.tokens (see docs/security.md)
CHECKPOINT_DIR = "/models/checkpoint"
LABEL = "app.kubernetes.io"


class DeployError(DistreeError):
    """Manifests cannot be written for this spec or these options."""


@dataclass
class K8sOptions:
    """What the spec does not say about a Kubernetes deployment."""

    image: str
    name: str = "distree"
    namespace: str = "default"
    pool_label: str = "distree.io/pool"
    pools: dict[int, str] = field(default_factory=dict)  # tier -> pool label value (default "tier-K")
    memory: str = "1Gi"
    cpu: str | None = None  # default: the spec's threads
    backends: dict[int, str] = field(default_factory=dict)  # tier -> torch | onnx (default: the spec's, or torch)
    grace_s: int = 15


def _dns_name(v: str, what: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", v):
        raise DeployError(f"{what} {v!r} must be a DNS label: lower-case letters, digits and '-', at most 42")
    return v


def service_host(opts: K8sOptions, k: int) -> str:
    return f"{opts.name}-tier{k}.{opts.namespace}.svc.cluster.local"


def pod_spec_toml(spec: ClusterSpec, opts: K8sOptions) -> str:
    """The spec as the pods read it: one node per tier at its Service's DNS name, paths inside the pod."""
    nodes = []
    for k in range(1, spec.num_nodes + 1):
        first = spec.node(k)
        keep = first.model_dump(
            mode="json", exclude_defaults=True, exclude={"segment", "address", "listen", "metrics_port", "cert", "key"}
        )
        port = GRPC_PORT + k
        node = {"segment": k, "address": f"{service_host(opts, k)}:{port}", "listen": f"0.0.0.0:{port}"}
        node["metrics_port"] = METRICS_PORT + k
        if spec.tls is not None:
            node |= {"cert": f"{TLS_DIR}/tls.crt", "key": f"{TLS_DIR}/tls.key"}
        nodes.append(node | keep)
    options = spec.model_dump(
        mode="json",
        exclude_defaults=True,
        exclude={"format_version", "checkpoint", "policy", "tls", "nodes", "batching", "access"},
    )
    access = spec.access.model_dump(mode="json", exclude_defaults=True)
    if spec.access.token_file is not None:
        access["token_file"] = f"{TOKENS_DIR}/chain.token"
    if spec.access.client_tokens_file is not None:
        access["client_tokens_file"] = f"{TOKENS_DIR}/clients.tokens"
    if access:
        options["access"] = access
    tls = None
    if spec.tls is not None:
        tls = {"ca": f"{TLS_DIR}/ca.crt", "client_auth": spec.tls.client_auth}
        if spec.tls.client_auth:  # pods call their successors with their own certificate
            tls |= {"client_cert": f"{TLS_DIR}/tls.crt", "client_key": f"{TLS_DIR}/tls.key"}
        if spec.tls.server_name:
            tls["server_name"] = spec.tls.server_name
    batching = spec.batching.model_dump(exclude_defaults=True)
    return spec_toml(CHECKPOINT_DIR, "policy.json", nodes, batching=batching or None, tls=tls, **options)


def _labels(opts: K8sOptions, k: int | None = None) -> dict[str, str]:
    out = {f"{LABEL}/name": "distree", f"{LABEL}/instance": opts.name}
    if k is not None:
        out["distree.io/tier"] = str(k)
    return out


def config_map(spec: ClusterSpec, opts: K8sOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{opts.name}-config", "namespace": opts.namespace, "labels": _labels(opts)},
        "data": {"cluster.toml": pod_spec_toml(spec, opts), "policy.json": Path(spec.policy).read_text()},
    }


def _backend(spec: ClusterSpec, opts: K8sOptions, k: int) -> str:
    b = opts.backends.get(k) or getattr(spec.node(k), "backend", None) or "torch"
    b = str(b)
    if b.split("-")[0] not in ("torch", "onnx"):
        raise DeployError(f"tier {k}: backend {b!r} must be torch or onnx (onnx-int8)")
    return b


def _probe(spec: ClusterSpec, k: int, **timing: int) -> dict[str, Any]:
    # Kubernetes' gRPC probes speak plaintext; with TLS on, the port is probed instead
    check: dict[str, Any] = {"grpc": {"port": GRPC_PORT + k}} if spec.tls is None else {"tcpSocket": {"port": "grpc"}}
    return {**check, **timing}


def deployment(spec: ClusterSpec, opts: K8sOptions, k: int) -> dict[str, Any]:
    name = f"{opts.name}-tier{k}"
    backend = _backend(spec, opts, k)
    cpu = opts.cpu or str(spec.threads)
    container: dict[str, Any] = {
        "name": "node",
        "image": opts.image,
        "args": ["serve", "--spec", f"{CONFIG_DIR}/cluster.toml", "--node", str(k), "--grace-s", str(opts.grace_s - 3)],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT + k, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT + k, "protocol": "TCP"},
        ],
        "env": [{"name": "OMP_NUM_THREADS", "value": str(spec.threads)}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": {"cpu": cpu, "memory": opts.memory}, "limits": {"memory": opts.memory}},
        "startupProbe": _probe(spec, k, periodSeconds=2, failureThreshold=90),
        "readinessProbe": _probe(spec, k, periodSeconds=5, failureThreshold=1),
        "livenessProbe": _probe(spec, k, periodSeconds=10, failureThreshold=3),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": f"{opts.name}-config"}}]
    if spec.tls is not None:
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": f"{opts.name}-tls-tier{k}"}})
    if spec.access.token_file is not None or spec.access.client_tokens_file is not None:
        container["volumeMounts"].append({"name": "tokens", "mountPath": TOKENS_DIR, "readOnly": True})
        # mode 0400: a node refuses a token file others can read
        volumes.append({"name": "tokens", "secret": {"secretName": f"{opts.name}-tokens", "defaultMode": 0o400}})
    pod_labels = {**_labels(opts, k), "distree.io/backend": backend}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": _labels(opts, k)},
        "spec": {
            "replicas": len(spec.replicas(k)),
            "selector": {"matchLabels": _labels(opts, k)},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT + k),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "nodeSelector": {opts.pool_label: opts.pools.get(k, f"tier-{k}")},
                    "affinity": {
                        "podAntiAffinity": {  # replicas of a tier on different devices where the pool allows
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": _labels(opts, k)},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                    "terminationGracePeriodSeconds": opts.grace_s,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def headless_service(opts: K8sOptions, k: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{opts.name}-tier{k}", "namespace": opts.namespace, "labels": _labels(opts, k)},
        "spec": {
            "clusterIP": "None",  # headless: DNS answers every ready pod, gRPC balances over them
            "selector": _labels(opts, k),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT + k, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT + k, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def manifests(spec: ClusterSpec, opts: K8sOptions) -> dict[str, list[dict[str, Any]]]:
    """File name -> the resources in it."""
    _dns_name(opts.name, "--name")
    _dns_name(opts.namespace, "--namespace")
    out = {"configmap.yaml": [config_map(spec, opts)]}
    for k in range(1, spec.num_nodes + 1):
        out[f"tier{k}.yaml"] = [deployment(spec, opts, k), headless_service(opts, k)]
    return out


def containerfile(spec: ClusterSpec, opts: K8sOptions) -> str:
    onnx = any(_backend(spec, opts, k).startswith("onnx") for k in range(1, spec.num_nodes + 1))
    return f"""\
# The node image of `{opts.image}`: distree (torch CPU build) and the checkpoint at {CHECKPOINT_DIR}.
# Build from the distree source folder (pyproject.toml), the checkpoint as a second build context:
#   podman build -f <this folder>/Containerfile --build-context checkpoint={spec.checkpoint} -t {opts.image} .
#   (docker buildx build takes the same arguments)
FROM docker.io/library/python:3.11-slim
ARG EXTRAS="{"onnx" if onnx else ""}"
WORKDIR /opt/distree
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \\
        ".${{EXTRAS:+[$EXTRAS]}}" && rm -rf /root/.cache
COPY --from=checkpoint . {CHECKPOINT_DIR}/
USER 65532:65532
ENTRYPOINT ["distree"]
CMD ["--help"]
"""


def write_manifests(spec: ClusterSpec, opts: K8sOptions, out: str | Path) -> list[Path]:
    """Write every manifest file and the Containerfile into ``out``; returns the paths written."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - in the deploy and dev extras
        raise DeployError("writing manifests needs PyYAML: pip install 'distree[deploy]'") from e

    class Dumper(yaml.SafeDumper):
        """Multi-line strings (the spec, the policy) as literal blocks, as written."""

    def text(dumper: yaml.SafeDumper, v: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)

    Dumper.add_representer(str, text)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, docs in manifests(spec, opts).items():
        p = out / fname
        p.write_text(yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, width=120))
        paths.append(p)
    p = out / "Containerfile"
    p.write_text(containerfile(spec, opts))
    return [*paths, p]
