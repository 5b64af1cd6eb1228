"""Replicas per tier on loopback: kill -9 one of two replicas (of tier 3, of the ingress) under 1,000
requests; every request is answered, none degraded; a draining replica is skipped."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.runtime import ClusterClient, node_info, parse_spec
from distree.runtime.balancing import tier_target

pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("replicas")]

N = 1000


def _rows(address: str) -> int:
    try:
        return json.loads(node_info(address, timeout_s=2).stats_json)["counts"]["rows"]
    except grpc.RpcError:
        return -1


def _run_and_kill(client: ClusterClient, xs: list, watch: str, kill) -> list:
    """Send ``xs`` (16 in flight) and call ``kill`` once the node at ``watch`` has taken a fifth of them."""
    out: list = []
    t = threading.Thread(target=lambda: out.extend(client.infer_many(xs, concurrency=16, rpc_timeout_s=120)))
    t.start()
    end = time.monotonic() + 120
    while _rows(watch) < N // 10:
        assert time.monotonic() < end and t.is_alive(), "requests did not reach the replica to kill"
        time.sleep(0.02)
    kill()
    t.join(300)
    assert not t.is_alive()
    return out


def _check_all_answered(out: list) -> np.ndarray:
    errors = [r for r in out if isinstance(r, grpc.RpcError)]
    assert not errors, f"{len(errors)} requests lost, e.g. {errors[0].code()}: {errors[0].details()}"
    assert len(out) == N
    degraded = [r.reasons[0] for r in out if r.degraded[0]]
    assert not degraded, f"{len(degraded)} answers degraded: {sorted(set(degraded))}"
    return np.array([int(r.exit_node[0]) for r in out])


def test_kill_one_of_two_tier3_replicas_loses_and_degrades_nothing(rt):
    spec = write_spec(rt, "rep3", policy=rt.last_exit, replicas={3: 2})
    assert spec.num_nodes == 4 and len(spec.replicas(3)) == 2
    xs = [rt.images[i % len(rt.images)][None] for i in range(N)]
    a, b = spec.addresses(3)
    with running(spec) as cluster, ClusterClient(spec.addresses(1)) as client:
        out = _run_and_kill(client, xs, a, lambda: cluster.kill_node(3, replica=1))
        exits = _check_all_answered(out)
        assert (exits == 4).all(), "the last-exit policy answers every request at node 4"
        assert _rows(a) == -1 and _rows(b) > 0, "the survivor took the load"
        # the killed replica comes back and takes its share again
        cluster.start_node(3, 1)
        cluster.wait_node(3, replica=1)
        before = _rows(spec.addresses(3)[0])
        end = time.monotonic() + 30
        while _rows(spec.addresses(3)[0]) == before:
            r = client.infer(rt.images[:1])
            assert not r.degraded[0]
            assert time.monotonic() < end, "the restarted replica got no requests"


def test_kill_one_of_two_ingress_replicas_loses_nothing(rt):
    spec = write_spec(rt, "rep1", replicas={1: 2})
    xs = [rt.images[i % len(rt.images)][None] for i in range(N)]
    a, b = spec.addresses(1)
    with running(spec) as cluster, ClusterClient([a, b]) as client:
        out = _run_and_kill(client, xs, a, lambda: cluster.kill_node(1, replica=1))
        _check_all_answered(out)
        assert _rows(b) > N // 2, "the surviving ingress replica took the rest"


def test_draining_replica_is_skipped(rt):
    """SIGTERM: the replica turns NOT_SERVING on its health service, its callers stop picking it; nothing
    is refused or degraded while it drains."""
    spec = write_spec(rt, "drain", policy=rt.last_exit, replicas={2: 2})
    xs = [rt.images[i % len(rt.images)][None] for i in range(300)]
    with running(spec) as cluster, ClusterClient(spec.addresses(1)) as client:
        out: list = []
        t = threading.Thread(target=lambda: out.extend(client.infer_many(xs, concurrency=8)))
        t.start()
        while _rows(spec.addresses(2)[0]) < 30:
            time.sleep(0.02)
        cluster.stop_node(2, replica=1)
        t.join(120)
        assert not [r for r in out if isinstance(r, grpc.RpcError)]
        assert not [r for r in out if r.degraded[0]], "a draining replica degraded answers"


def test_spec_with_replicas_and_targets(rt, tmp_path):
    nodes = [
        {"address": "127.0.0.1:7001"},
        {"address": "127.0.0.1:7002", "segment": 2},
        {"address": "127.0.0.1:7012", "segment": 2},
        {"address": "127.0.0.1:7003", "segment": 3},
        {"address": "127.0.0.1:7004", "segment": 4},
    ]
    s = parse_spec({"checkpoint": str(rt.checkpoint), "policy": str(rt.policy), "nodes": nodes}, tmp_path / "c.toml")
    assert s.num_nodes == 4 and s.addresses(2) == ["127.0.0.1:7002", "127.0.0.1:7012"]
    assert s.node(2, 2).address == "127.0.0.1:7012" and s.node_name(2, 2) == "2.2" and s.node_name(3) == "3"
    assert [(k, r) for k, r, _ in s.members()] == [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]
    assert tier_target(s.addresses(2)) == "ipv4:127.0.0.1:7002,127.0.0.1:7012"
    assert tier_target(["localhost:1", "localhost:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert tier_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert tier_target(["svc.example:1"]) == "svc.example:1"  # one name: gRPC's DNS resolver, every address
    with pytest.raises(Exception, match="no replica 3"):
        s.node(2, 3)
    same = [*nodes, {"address": "127.0.0.1:7002", "segment": 2, "listen": "0.0.0.0:7099"}]
    with pytest.raises(Exception, match="must have distinct addresses: nodes 2 and 2 both have the address"):
        parse_spec({"checkpoint": str(rt.checkpoint), "policy": str(rt.policy), "nodes": same}, tmp_path / "c.toml")
