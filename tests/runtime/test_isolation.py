"""Isolation on a real cluster: malformed Forward calls amid batched traffic are refused alone and change
no other request's answer; the node's log does not fill with tracebacks."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.policies import create_policy, load_policy
from distree.runtime import ClusterClient
from distree.runtime.client import make_channel
from distree.runtime.protos import node_pb2, node_pb2_grpc
from distree.runtime.tensors import to_proto

pytestmark = pytest.mark.xdist_group("runtime-isolation")


def test_bad_forwards_amid_batched_requests_change_none_of_their_answers(rt, tmp_path):
    # patience carries state from node to node: a Forward without it is malformed at node 2
    policy = create_policy("patience", 4, [np.inf, 2, 2, 0]).save(tmp_path / "patience.json")
    pol = load_policy(policy)
    scores = pol.score_matrix(rt.trace.logits, rt.trace.features)
    ex = scores >= pol.thresholds[None, :]
    ex[:, -1] = True
    want_exit = ex.argmax(axis=1)
    want_pred = rt.trace.predictions[np.arange(len(want_exit)), want_exit]
    assert len(set(want_exit.tolist())) >= 2
    spec = write_spec(rt, "isolation", policy=policy, batching={"max_batch_size": 8, "max_queue_delay_ms": 2.0})
    n = 1000
    idx = np.arange(n) % len(rt.images)
    hop = tuple(rt.trace.cost.hop_shapes[0])
    refused: list[grpc.StatusCode] = []
    stop = threading.Event()

    def bad_forwards() -> None:
        with make_channel(spec.nodes[1].address, None) as ch:
            stub = node_pb2_grpc.ChainNodeStub(ch)
            i = 0
            while not stop.is_set():
                x = np.random.default_rng(i).standard_normal((1, *hop)).astype(np.float32)
                req = node_pb2.ForwardRequest(request_ids=[f"bad{i}"], features=to_proto(x), from_node=1)
                try:
                    stub.Forward(req, timeout=30)
                    refused.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    refused.append(e.code())
                i += 1

    with running(spec, log_dir=tmp_path / "logs"):
        t = threading.Thread(target=bad_forwards)
        t.start()
        try:
            with ClusterClient(spec.nodes[0].address) as c:
                res = c.infer_many([rt.images[i][None] for i in idx], concurrency=16)
        finally:
            stop.set()
            t.join(60)
    assert not [r for r in res if isinstance(r, grpc.RpcError)]
    assert not any(bool(r.degraded[0]) for r in res)
    np.testing.assert_array_equal([int(r.exit_node[0]) - 1 for r in res], want_exit[idx])
    np.testing.assert_array_equal([int(r.predictions[0]) for r in res], want_pred[idx])
    assert len(refused) >= 10 and set(refused) == {grpc.StatusCode.INVALID_ARGUMENT}, set(refused)
    log = (tmp_path / "logs" / "node2.log").read_text()
    assert "Traceback" not in log and log.count("batch failed") <= 12  # once, then at powers of two
