"""Helpers of the runtime tests: artifacts, spec files on free ports, clusters that always stop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distree.runtime import LocalCluster, load_spec
from distree.runtime.cluster import free_ports
from distree.runtime.spec import ClusterSpec
from distree.runtime.spec_toml import spec_toml
from distree.trace import Trace


@dataclass
class Artifacts:
    root: Path
    checkpoint: Path
    trace: Trace
    policy: Path  # confidence, thresholds giving a mix of exit nodes
    last_exit: Path
    images: np.ndarray  # uint8 (n, C, H, W): the traced test split
    labels: np.ndarray

    def offline(self) -> tuple[np.ndarray, np.ndarray]:
        """Exit node (0-based) and prediction per sample from the trace: first node with score >= threshold."""
        from distree.policies import load_policy

        pol = load_policy(self.policy)
        s = pol.score_matrix(self.trace.logits, self.trace.features)
        ex = s >= pol.thresholds[None, :]
        ex[:, -1] = True
        first = ex.argmax(axis=1)
        return first, self.trace.predictions[np.arange(len(first)), first]


def write_spec(
    rt: Artifacts,
    name: str,
    *,
    policy: Path | None = None,
    node_extra: dict[int, dict[str, Any]] | None = None,
    replicas: dict[int, int] | None = None,
    **options: Any,
) -> ClusterSpec:
    """A 4-tier spec on free loopback ports; ``replicas`` gives tiers more than one node ({tier: count})."""
    tiers = [k for k in range(1, 5) for _ in range((replicas or {}).get(k, 1))]
    ports = free_ports(len(tiers))
    nodes = [
        {"address": f"127.0.0.1:{p}", "segment": k, **(node_extra or {}).get(k, {})}
        for k, p in zip(tiers, ports, strict=True)
    ]
    path = rt.root / f"{name}.toml"
    path.write_text(spec_toml(rt.checkpoint, policy or rt.policy, nodes, **options))
    return load_spec(path)


@contextlib.contextmanager
def running(spec: ClusterSpec, log_dir: Path | None = None) -> Iterator[LocalCluster]:
    cluster = LocalCluster(spec, log_dir=log_dir or spec.path.parent / f"{spec.path.stem}-logs")
    try:
        cluster.start(timeout_s=120)
        yield cluster
    finally:
        cluster.stop(timeout_s=10)
