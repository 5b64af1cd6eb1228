"""Deployment of a cluster spec onto a fleet manager: Kubernetes manifests and a node image (``distree
deploy k8s``). May import :mod:`distree.runtime` (the spec) but not torch. See docs/deploy.md.
"""

from .k8s import DeployError, K8sOptions, containerfile, manifests, pod_spec_toml, write_manifests
from .validate import validate_manifests

__all__ = [
    "DeployError",
    "K8sOptions",
    "containerfile",
    "manifests",
    "pod_spec_toml",
    "validate_manifests",
    "write_manifests",
]
