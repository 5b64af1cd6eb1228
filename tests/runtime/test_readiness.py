"""A node reports SERVING (the whole server, health service "") only once it can answer as configured:
its successor serves and, on node 1, HTTP listens. A chain started in any order is ready last node first."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import grpc
import pytest
from _rt import write_spec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.runtime.cluster import LocalCluster, free_ports

pytestmark = pytest.mark.xdist_group("runtime-readiness")


def _status(address: str) -> int | None:
    # a plain channel: the project's channels check health themselves and refuse a NOT_SERVING server
    with grpc.insecure_channel(address) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0)  # type: ignore[attr-defined]
        except grpc.RpcError:
            return None
        return int(r.status)


def test_a_node_is_not_serving_until_its_successor_serves_and_http_listens(rt):
    http_port = free_ports(1)[0]
    spec = write_spec(rt, "readiness", policy=rt.last_exit, http_port=http_port)
    cluster = LocalCluster(spec, log_dir=spec.path.parent / "readiness-logs")
    try:
        for k in (1, 2):  # nodes 3 and 4 not started yet: node 2 cannot forward, so neither is ready
            cluster.start_node(k)
        end = time.monotonic() + 60
        for k in (1, 2):
            while _status(spec.nodes[k - 1].address) is None:  # node k listens (its health service answers)
                assert time.monotonic() < end, f"node {k} did not start listening"
                assert cluster.procs[(k, 1)].poll() is None, f"node {k} exited"
                time.sleep(0.1)
        for _ in range(10):
            assert _status(spec.nodes[0].address) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert _status(spec.nodes[1].address) == health_pb2.HealthCheckResponse.NOT_SERVING
            time.sleep(0.1)
        for k in (4, 3):
            cluster.start_node(k)
        cluster.wait_node(1, timeout_s=60)  # SERVING on node 1 ...
        # ... means node 2 serves too and node 1's HTTP endpoint answers at once
        assert _status(spec.nodes[1].address) == health_pb2.HealthCheckResponse.SERVING
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        try:
            code = urllib.request.urlopen(url, timeout=10).status
        except urllib.error.URLError as e:  # connection refused: SERVING came before HTTP listened
            pytest.fail(f"node 1 reported SERVING but {url} did not answer: {e}")
        assert code == 200
    finally:
        cluster.stop(timeout_s=10)
