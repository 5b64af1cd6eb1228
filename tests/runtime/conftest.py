"""Fixtures for the runtime: a traced tiny checkpoint, policy files, and real node processes on loopback.

Every cluster is started by a fixture and stopped in its ``finally`` (SIGTERM, then SIGKILL), so no
node process outlives the tests. Tests that share the main cluster share one xdist group (one worker
starts it once).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distree.data import load_split
from distree.policies import create_policy
from distree.runtime import LocalCluster, load_spec
from distree.runtime.cluster import free_ports
from distree.runtime.spec import ClusterSpec, spec_toml
from distree.trace import Trace, trace_checkpoint


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


@pytest.fixture(scope="session")
def rt(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("runtime")
    tr = trace_checkpoint(tiny_checkpoint, "test")
    tr.save(root / "test.trace.safetensors")
    pol = create_policy("confidence", 4)
    s = pol.score_matrix(tr.logits, tr.features)
    # thresholds at score quantiles so that every node answers some samples
    th = [float(np.quantile(s[:, 0], 0.8)), float(np.quantile(s[:, 1], 0.6)), float(np.quantile(s[:, 2], 0.5)), 0.0]
    policy = create_policy("confidence", 4, th).save(root / "confidence.json")
    last = create_policy("last-exit", 4).save(root / "last-exit.json")
    ds = load_split("synthetic", "test")
    return Artifacts(root, tiny_checkpoint, tr, policy, last, ds.images.numpy(), ds.labels.numpy())


def write_spec(
    rt: Artifacts,
    name: str,
    *,
    policy: Path | None = None,
    node_extra: dict[int, dict[str, Any]] | None = None,
    **options: Any,
) -> ClusterSpec:
    ports = free_ports(4)
    nodes = [
        {"address": f"127.0.0.1:{p}", "segment": k + 1, **(node_extra or {}).get(k + 1, {})}
        for k, p in enumerate(ports)
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


@pytest.fixture(scope="session")
def main_cluster(rt: Artifacts) -> Iterator[LocalCluster]:
    """4 nodes, confidence policy, no batching: shared by the protocol, acceptance and validation tests."""
    spec = write_spec(rt, "main", max_message_bytes=1 << 20)
    with running(spec) as c:
        yield c
