"""Fixtures for the runtime: a traced tiny checkpoint, policy files, and real node processes on loopback.

Every cluster is started by a fixture or test and stopped in a ``finally`` (SIGTERM, then SIGKILL), so
no node process outlives the tests. Tests that share the main cluster share one xdist group (one
worker starts it once).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _rt import Artifacts, write_spec
from _unit import Unit, make_unit

from distree.data import load_split
from distree.policies import create_policy
from distree.runtime.cluster import free_ports
from distree.runtime.spec import ClusterSpec
from distree.trace import trace_checkpoint


def _robust_threshold(scores: np.ndarray, q: float) -> float:
    u = np.unique(scores)
    lo, hi = np.quantile(scores, max(q - 0.15, 0.0)), np.quantile(scores, min(q + 0.15, 1.0))
    gaps = [(u[i] - u[i - 1], i) for i in range(1, len(u)) if lo <= u[i] <= hi]
    if not gaps:
        return float(np.quantile(scores, q))
    _, i = max(gaps)
    return float((u[i] + u[i - 1]) / 2)


@pytest.fixture(scope="session")
def rt(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    root = tmp_path_factory.mktemp("runtime")
    tr = trace_checkpoint(tiny_checkpoint, "test")
    tr.save(root / "test.trace.safetensors")
    pol = create_policy("confidence", 4)
    s = pol.score_matrix(tr.logits, tr.features)
    # thresholds near score quantiles so that every node answers some samples, placed in the middle of
    # the widest gap between neighbouring scores: float noise between batch sizes cannot flip a decision
    th = [_robust_threshold(s[:, i], q) for i, q in enumerate((0.8, 0.6, 0.5))] + [0.0]
    policy = create_policy("confidence", 4, th).save(root / "confidence.json")
    last = create_policy("last-exit", 4).save(root / "last-exit.json")
    ds = load_split("synthetic", "test")
    return Artifacts(root, tiny_checkpoint, tr, policy, last, ds.images.numpy(), ds.labels.numpy())


@pytest.fixture(scope="session")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Unit:
    """An untrained small-cnn checkpoint and a confidence policy for node cores with fake successors."""
    return make_unit(tmp_path_factory.mktemp("unit"))


def _distree(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distree", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def main_cluster(rt: Artifacts) -> Iterator[ClusterSpec]:
    """4 nodes, confidence policy, dynamic batching, HTTP/REST on node 1; started and stopped with the CLI
    (`distree cluster up --detach` / `distree cluster down`). Shared by the protocol, acceptance and
    validation tests."""
    *ports, http_port = free_ports(5)
    metrics = {k + 1: {"metrics_port": p} for k, p in enumerate(ports)}  # Prometheus endpoints
    spec = write_spec(
        rt,
        "main",
        node_extra=metrics,
        max_message_bytes=1 << 20,
        http_port=http_port,  # the Open Inference Protocol over HTTP/REST too
        batching={"max_batch_size": 8, "max_queue_delay_ms": 2.0},
    )
    try:
        up = _distree("cluster", "up", "--spec", str(spec.path), "--detach", "--log-dir", str(rt.root / "main-logs"))
        assert up.returncode == 0, up.stdout + up.stderr
        assert spec.nodes[0].address in up.stdout and spec.pid_file.is_file()
        yield spec
        down = _distree("cluster", "down", "--spec", str(spec.path))
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.count("stopped") == 4 and not spec.pid_file.exists(), down.stdout
    finally:
        if spec.pid_file.exists():  # never leave nodes behind
            for pid in json.loads(spec.pid_file.read_text()).values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            spec.pid_file.unlink()
