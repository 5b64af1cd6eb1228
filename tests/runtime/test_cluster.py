"""A 4-node loopback cluster: offline-identical answers, the Open Inference Protocol, malformed input."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distree.runtime import ClusterClient, node_info
from distree.runtime.client import build_request, make_channel
from distree.runtime.kserve import SERVICE
from distree.runtime.protos import kserve_v2_pb2 as pb
from distree.runtime.protos import node_pb2, node_pb2_grpc
from distree.runtime.tensors import to_proto

pytestmark = pytest.mark.xdist_group("runtime-main")


def _infer_rpc(ch: grpc.Channel):
    return ch.unary_unary(
        f"/{SERVICE}/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def test_answers_match_offline_evaluation(rt, main_cluster):
    exit_off, pred_off = rt.offline()
    assert len(set(exit_off.tolist())) >= 3, "fixture thresholds should spread exits over the nodes"
    with ClusterClient(main_cluster.nodes[0].address) as c:
        res = c.infer_many([x[None] for x in rt.images], concurrency=8)
    assert not [r for r in res if isinstance(r, grpc.RpcError)]
    exits = np.array([int(r.exit_node[0]) for r in res]) - 1
    preds = np.array([int(r.predictions[0]) for r in res])
    assert not any(bool(r.degraded[0]) for r in res)
    np.testing.assert_array_equal(exits, exit_off)
    np.testing.assert_array_equal(preds, pred_off)
    # the probabilities are those of the exit that answered
    probs = np.stack([r.probs[0] for r in res])
    lg = rt.trace.logits[np.arange(len(exits)), exits]
    ref = np.exp(lg - lg.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, ref / ref.sum(-1, keepdims=True), atol=1e-4)


def test_one_request_with_many_rows_exits_per_row(rt, main_cluster):
    exit_off, pred_off = rt.offline()
    with ClusterClient(main_cluster.nodes[0].address) as c:
        r = c.infer(rt.images[:24], request_id="batch-24")
    assert r.request_id == "batch-24"
    np.testing.assert_array_equal(r.exit_node - 1, exit_off[:24])
    np.testing.assert_array_equal(r.predictions, pred_off[:24])


def test_float_input_equals_uint8_input(rt, main_cluster):
    from distree.checkpoint import read_sidecar

    norm = read_sidecar(rt.checkpoint)["normalization"]
    m = np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
    x = rt.images[:8]
    with ClusterClient(main_cluster.nodes[0].address) as c:
        a = c.infer(x)
        b = c.infer((x.astype(np.float32) / np.float32(255.0) - m) / s)
    np.testing.assert_array_equal(a.exit_node, b.exit_node)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


def test_tritonclient_round_trip(rt, main_cluster):
    import tritonclient.grpc as tc

    exit_off, pred_off = rt.offline()
    cl = tc.InferenceServerClient(url=main_cluster.nodes[0].address)
    try:
        assert cl.is_server_live()
        assert cl.is_server_ready()
        assert cl.is_model_ready("distree")
        assert not cl.is_model_ready("no-such-model")
        assert cl.get_server_metadata().name == "distree"
        md = cl.get_model_metadata("distree")
        assert md.inputs[0].name == "INPUT" and list(md.inputs[0].shape) == [-1, 1, 8, 8]
        assert {o.name for o in md.outputs} >= {"PROBS", "EXIT_NODE", "DEGRADED"}
        inp = tc.InferInput("INPUT", [6, 1, 8, 8], "UINT8")
        inp.set_data_from_numpy(rt.images[:6])
        outs = [tc.InferRequestedOutput("PROBS"), tc.InferRequestedOutput("EXIT_NODE")]
        res = cl.infer("distree", [inp], outputs=outs, request_id="t1", timeout=5_000_000)
        probs, exits = res.as_numpy("PROBS"), res.as_numpy("EXIT_NODE")
        assert probs.shape == (6, rt.trace.num_classes)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(exits - 1, exit_off[:6])
        np.testing.assert_array_equal(probs.argmax(-1), pred_off[:6])
        assert res.get_response().id == "t1"
    finally:
        cl.close()


def _good(rt) -> pb.ModelInferRequest:
    return build_request(rt.images[:1])


def _bad_requests(rt) -> dict[str, tuple[pb.ModelInferRequest, str]]:
    x = rt.images[:2]
    out: dict[str, tuple[pb.ModelInferRequest, str]] = {}
    r = build_request(x)
    r.inputs[0].datatype = "INT64"
    out["wrong dtype"] = (r, "datatype")
    r = build_request(x.astype(np.float32))
    r.inputs[0].datatype = "UINT8"  # claims 1-byte pixels but carries 4-byte floats
    out["dtype and bytes disagree"] = (r, "too long")
    r = build_request(x)
    del r.inputs[0].shape[:]
    r.inputs[0].shape.extend([2, 3, 8, 8])
    out["wrong shape"] = (r, "shape")
    r = build_request(x)
    r.raw_input_contents[0] = r.raw_input_contents[0][:-7]
    out["truncated tensor"] = (r, "truncated")
    r = build_request(x)
    r.raw_input_contents[0] = r.raw_input_contents[0] + b"\0" * 3
    out["extra bytes"] = (r, "too long")
    bad = x.astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    bad[1, 0, 1, 1] = np.inf
    out["nan/inf input"] = (build_request(bad), "NaN/inf")
    r = build_request(x)
    r.outputs.add(name="LOGITS")
    out["unknown output"] = (r, "unknown output")
    r = build_request(x)
    r.parameters["timeout"].string_param = "soon"
    out["timeout not an integer"] = (r, "timeout")
    r = build_request(x)
    r.parameters["timeout"].int64_param = -5
    out["negative timeout"] = (r, "timeout")
    r = build_request(x)
    del r.inputs[0].shape[:]
    r.inputs[0].shape.extend([0, 1, 8, 8])
    r.raw_input_contents[0] = b""
    out["empty batch"] = (r, "batch size")
    r = build_request(x)
    r.inputs[0].name = "IMAGE"
    out["unknown input"] = (r, "unknown input")
    r = build_request(x)
    r.ClearField("raw_input_contents")
    out["no data"] = (r, "no data")
    return out


def test_malformed_requests_get_clear_errors_and_node_keeps_serving(rt, main_cluster):
    addr = main_cluster.nodes[0].address
    with make_channel(addr, max_message_bytes=64 << 20) as ch:
        infer = _infer_rpc(ch)
        for name, (req, needle) in _bad_requests(rt).items():
            with pytest.raises(grpc.RpcError) as ei:
                infer(req, timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert needle.lower() in ei.value.details().lower(), (name, ei.value.details())
            ok = infer(_good(rt), timeout=10)  # the node still serves
            assert len(ok.outputs) == 4, name
        one = rt.images[:1]
        unknown = build_request(one, model_name="resnet"), build_request(one)
        unknown[1].model_version = "2"
        for req, needle in zip(unknown, ("unknown model", "no version '2'"), strict=True):
            with pytest.raises(grpc.RpcError) as ei:
                infer(req, timeout=10)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND and needle in ei.value.details()
        # oversized message: over the 1 MiB limit of this cluster's spec
        big = build_request(np.zeros((1024, 1, 8, 8), np.float32))
        big.raw_input_contents.append(b"\0" * (2 << 20))
        with pytest.raises(grpc.RpcError) as ei:
            infer(big, timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(infer(_good(rt), timeout=10).outputs) == 4


def test_malformed_forward_between_nodes_is_rejected(rt, main_cluster):
    addr = main_cluster.nodes[1].address
    shape = rt.trace.cost.hop_shapes[0]
    with make_channel(addr) as ch:
        stub = node_pb2_grpc.ChainNodeStub(ch)
        wrong = np.zeros((1, shape[0] + 1, *shape[1:]), np.float32)
        nan = np.full((1, *shape), np.nan, np.float32)
        for feats, needle in ((wrong, "shape"), (nan, "NaN")):
            req = node_pb2.ForwardRequest(request_ids=["a"], features=to_proto(feats), from_node=1)
            with pytest.raises(grpc.RpcError) as ei:
                stub.Forward(req, timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in ei.value.details()
        good = node_pb2.ForwardRequest(
            request_ids=["a", "b"], features=to_proto(np.zeros((2, *shape), np.float32)), from_node=1
        )
        resp = stub.Forward(good, timeout=10)
        assert sorted(a.request_id for a in resp.answers) == ["a", "b"]
        assert all(2 <= a.exit_node <= 4 for a in resp.answers)


def test_malformed_frames_on_the_node_stream_are_refused_alone(rt, main_cluster):
    """One ForwardStream: good forwards, then every kind of bad frame, then good ones again. Each bad frame
    gets its own error frame; the good ones on the same stream are answered, before and after."""
    from distree.runtime import frames
    from distree.runtime.forward_stream import METHOD

    shape = tuple(rt.trace.cost.hop_shapes[0])

    def fwd(rid: int, h: np.ndarray, **kw) -> bytes:
        b = h.shape[0]
        args = {"row_ids": list(range(rid * 10, rid * 10 + b)), "row_deadlines": [0.0] * b, "deadline_unix_s": 0.0}
        return frames.forward_frame(rid, h=h, from_node=1, **{**args, **kw})

    good = np.zeros((2, *shape), np.float32)
    sent = {
        1: fwd(1, good),
        2: fwd(2, np.zeros((1, shape[0] + 1, *shape[1:]), np.float32)),
        3: fwd(3, np.full((1, *shape), np.nan, np.float32)),
        4: fwd(4, good)[:-8],
        5: b"XX" + fwd(5, good)[2:],
        6: fwd(6, good[:1])[:24] + struct.pack("<I", 100_000) + fwd(6, good[:1])[28:],  # announces 100,000 rows
        7: fwd(7, good, state=b"not a policy state"),
        8: fwd(8, good[:1]),
    }
    want = {2: "shape", 3: "NaN", 4: "bytes", 5: "magic", 6: "batch size", 7: "state", 8: ""}
    with make_channel(main_cluster.nodes[1].address) as ch:
        replies = list(ch.stream_stream(METHOD)(iter(sent.values()), timeout=60))
    by_id = {}
    for r in replies:
        kind, rid = frames.frame_kind(r)
        by_id[rid if kind == frames.REPLY or rid else 5] = (kind, r)
    assert sorted(by_id) == list(range(1, 9)), sorted(by_id)
    for rid in (1, 8):
        kind, r = by_id[rid]
        assert kind == frames.REPLY
        ans = frames.decode_reply(r, ["a", "b"][: 2 if rid == 1 else 1]).answers
        assert all(2 <= a.exit_node <= 4 and abs(sum(a.probs) - 1) < 1e-4 for a in ans)
    for rid, needle in want.items():
        if rid == 8:
            continue
        kind, r = by_id[rid]
        code, msg = frames.decode_error(r)
        assert kind == frames.ERROR and code == grpc.StatusCode.INVALID_ARGUMENT.value[0], (rid, msg)
        assert needle in msg, (rid, msg)


_DTYPES = st.sampled_from(["UINT8", "FP32", "INT64", "BYTES", "", "FP16"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.sampled_from(["distree", "distree", "", "x" * 50]),
    version=st.sampled_from(["", "1", "2"]),
    dtype=_DTYPES,
    shape=st.lists(st.integers(-3, 12), min_size=0, max_size=5),
    nbytes=st.one_of(st.integers(0, 600), st.sampled_from([64, 256, 128])),
    n_raw=st.integers(0, 2),
    timeout=st.one_of(st.none(), st.integers(-10, 10**9)),
    outputs=st.lists(st.sampled_from(["PROBS", "EXIT_NODE", "DEGRADED", "SCORE", "X"]), max_size=3),
)
def test_fuzz_request_fields(rt, main_cluster, model, version, dtype, shape, nbytes, n_raw, timeout, outputs):
    req = pb.ModelInferRequest(model_name=model, model_version=version, id="fuzz")
    req.inputs.add(name="INPUT", datatype=dtype, shape=shape)
    for _ in range(n_raw):
        req.raw_input_contents.append(bytes(np.random.default_rng(nbytes).integers(0, 255, nbytes, dtype=np.uint8)))
    for o in outputs:
        req.outputs.add(name=o)
    if timeout is not None:
        req.parameters["timeout"].int64_param = timeout
    with make_channel(main_cluster.nodes[0].address) as ch:
        infer = _infer_rpc(ch)
        try:
            resp = infer(req, timeout=20)
            assert len(resp.outputs) == (len(outputs) or 4)
        except grpc.RpcError as e:
            ok = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert e.code() in ok, e.details()
            assert (e.code() == grpc.StatusCode.NOT_FOUND) == (model != "distree" or version == "2"), e.details()
        assert len(infer(_good(rt), timeout=20).outputs) == 4


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A node's Prometheus endpoint as {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_health_info_and_metrics(rt, main_cluster):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for k, n in enumerate(main_cluster.nodes, start=1):
        with make_channel(n.address) as ch:
            st_ = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert st_.status == health_pb2.HealthCheckResponse.SERVING
        info = node_info(n.address)
        assert info.node == k and info.num_nodes == 4 and info.policy == "confidence"
        assert info.est_compute_s > 0
    # the counters move by exactly the traffic sent now (earlier tests' traffic cancels in the difference)
    ports = [n.metrics_port for n in main_cluster.nodes]
    before = [_scrape(p) for p in ports]
    n_req = 48
    exits = rt.offline()[0][:n_req]
    with ClusterClient(main_cluster.nodes[0].address) as c:
        res = c.infer_many([x[None] for x in rt.images[:n_req]], concurrency=6)
    assert not [r for r in res if isinstance(r, grpc.RpcError)]
    np.testing.assert_array_equal([int(r.exit_node[0]) - 1 for r in res], exits)
    after = [_scrape(p) for p in ports]

    def delta(k: int, name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"node": str(k), **labels}.items())))
        return after[k - 1].get(key, 0.0) - before[k - 1].get(key, 0.0)

    for k in range(1, 5):
        reached = int((exits >= k - 1).sum())
        assert delta(k, "distree_requests_total") == reached, k  # rows received
        assert delta(k, "distree_exits_here_total") == int((exits == k - 1).sum()), k
        assert delta(k, "distree_batch_size_sum") == reached, k  # every row computed once, in some batch
        assert 1 <= delta(k, "distree_batch_size_count") <= reached, k
        assert delta(k, "distree_compute_seconds_count") == delta(k, "distree_batch_size_count"), k
        assert after[k - 1][("distree_inflight", (("node", str(k)),))] == 0, k
        degraded = [(key, v) for key, v in after[k - 1].items() if key[0] == "distree_degraded_total"]
        assert sum(v - before[k - 1].get(key, 0.0) for key, v in degraded) == 0, k
    for e in range(1, 5):  # node 1 counts every answer by the node that gave it
        assert delta(1, "distree_answers_total", exit_node=str(e)) == int((exits == e - 1).sum()), e
    assert sum(delta(1, "distree_answers_total", exit_node=str(e)) for e in range(1, 5)) == n_req


def test_requests_are_batched_and_cli_infer_works(rt, main_cluster):
    import json
    import os
    import re
    import subprocess
    import sys

    addr = main_cluster.nodes[0].address
    before = json.loads(node_info(addr).stats_json)["counts"]
    with ClusterClient(addr) as c:  # 64 requests, 16 in flight: a busy node batches the ones that queue
        res = c.infer_many([x[None] for x in rt.images[:64]], concurrency=16)
    assert not [r for r in res if isinstance(r, grpc.RpcError)]
    after = json.loads(node_info(addr).stats_json)["counts"]
    rows, batches = after["rows"] - before["rows"], after["batches"] - before["batches"]
    assert rows == 64
    assert 1 <= batches < rows, (rows, batches)  # concurrent requests shared batches
    inf = subprocess.run(
        [
            sys.executable,
            "-m",
            "distree",
            "infer",
            "--spec",
            str(main_cluster.path),
            "--dataset",
            "synthetic",
            "--limit",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert inf.returncode == 0, inf.stdout + inf.stderr
    assert "latency ms" in inf.stdout
    # the printed exits and accuracy are those of offline evaluation on the same 10 samples
    exit_off, pred_off = rt.offline()
    counts = ", ".join(f"node {e}: {int((exit_off[:10] == e - 1).sum())}" for e in range(1, 5))
    assert f"exits: {counts}; degraded: 0" in inf.stdout, inf.stdout
    acc = float(re.search(r"accuracy: ([0-9.]+)%", inf.stdout).group(1))
    assert acc == pytest.approx(100 * (pred_off[:10] == rt.labels[:10]).mean(), abs=0.006)
    assert json.loads(node_info(addr).stats_json)["counts"]["rows"] - after["rows"] == 10
