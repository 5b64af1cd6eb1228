"""Offline schema validation of manifests with the ``kubernetes-validate`` package (it bundles the
Kubernetes JSON schemas, so nothing is fetched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .k8s import DeployError

#: the Kubernetes version whose schemas manifests are checked against (gRPC probes: 1.27 and later)
K8S_VERSION = "1.30"


def validate_manifests(paths: list[Path], version: str = K8S_VERSION, *, strict: bool = True) -> list[str]:
    """Validate every resource of every YAML file against the schemas of Kubernetes ``version`` (strict:
    unknown fields are errors). Returns ``"file: Kind/name"`` per resource; raises DeployError naming the
    first invalid one."""
    try:
        import kubernetes_validate
        import yaml
    except ImportError as e:
        raise DeployError("validating manifests needs kubernetes-validate: pip install kubernetes-validate") from e
    done = []
    for p in paths:
        if p.suffix not in (".yaml", ".yml"):
            continue
        docs: list[Any] = [d for d in yaml.safe_load_all(p.read_text()) if d]
        for d in docs:
            what = f"{p.name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(d, version, strict=strict)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(x) for x in e.absolute_path)
                raise DeployError(f"{what} is not valid Kubernetes {version}: {path}: {e.message}") from None
            except kubernetes_validate.SchemaNotFoundError as e:
                raise DeployError(f"{what}: {e.message}") from None
            done.append(what)
    return done
