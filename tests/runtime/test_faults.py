"""Graceful degradation: a node dies under load, nothing is lost, it comes back and is used again."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.runtime import ClusterClient, node_info
from distree.runtime.cluster import free_ports

pytestmark = pytest.mark.xdist_group("runtime-faults")


def test_kill_node3_under_load_then_restart(rt):
    mport = free_ports(1)[0]
    spec = write_spec(rt, "faults", policy=rt.last_exit, node_extra={2: {"metrics_port": mport}})
    n = 1000
    xs = [rt.images[i % len(rt.images)][None] for i in range(n)]
    with running(spec) as cluster, ClusterClient(spec.nodes[0].address) as client:
        out: list = []
        t = threading.Thread(target=lambda: out.extend(client.infer_many(xs, concurrency=16)))
        t.start()
        end = time.monotonic() + 60
        while json.loads(node_info(spec.nodes[0].address).stats_json)["counts"]["rows"] < n // 4:
            assert time.monotonic() < end, "requests did not flow"
            time.sleep(0.01)
        cluster.kill_node(3)
        t.join(120)
        assert not t.is_alive()
        errors = [r for r in out if isinstance(r, grpc.RpcError)]
        assert not errors, f"{len(errors)} requests lost, e.g. {errors[0].code()}: {errors[0].details()}"
        assert len(out) == n
        exits = np.array([int(r.exit_node[0]) for r in out])
        degraded = np.array([bool(r.degraded[0]) for r in out])
        reasons = {r.reasons[0] for r in out if r.degraded[0]}
        # last-exit policy: every answer before node 4 is a degraded one, and flagged as such
        assert degraded.sum() > 0 and (exits < 4).sum() > 0
        np.testing.assert_array_equal(degraded, exits < 4)
        assert reasons <= {"successor-unavailable", "successor-error", "successor-timeout"}, reasons
        assert exits[: n // 10].min() == 4, "requests before the kill reached the last node"
        assert (exits[degraded] == 2).all(), "node 2 answers for the dead node 3"
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert 'distree_degraded_total{node="2",reason="successor-unavailable"}' in text
        # node 3 comes back: node 2 reconnects and forwards to it again
        cluster.start_node(3)
        cluster.wait_node(3)
        end = time.monotonic() + 30
        while True:
            r = client.infer(rt.images[:1])
            if int(r.exit_node[0]) == 4 and not r.degraded[0]:
                break
            assert time.monotonic() < end, "node 3 was not used again after its restart"
            time.sleep(0.1)
        rs = client.infer_many(xs[:50], concurrency=8)
        assert all(int(r.exit_node[0]) == 4 and not r.degraded[0] for r in rs)
