"""Who may call what without TLS: the chain's shared token on internal RPCs, bearer tokens for inference,
and the access rules as a pure decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.runtime import ClusterClient, node_info, parse_spec
from distree.runtime.auth import TOKEN_METADATA, AccessControl
from distree.runtime.client import make_channel
from distree.runtime.protos import node_pb2, node_pb2_grpc
from distree.runtime.spec import SpecError

pytestmark = pytest.mark.xdist_group("runtime-access")


def _secret(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_plaintext_internal_calls_need_the_chain_token_and_inference_a_bearer_token(rt, tmp_path):
    access = {
        "token_file": _secret(tmp_path / "chain.token", "s3cret-chain\n"),
        "client_tokens_file": _secret(tmp_path / "clients.tokens", "alice-token\nbob-token\n"),
    }
    metrics = {k: {"metrics_port": p} for k, p in zip(range(1, 5), _ports(4), strict=True)}
    http_port = _ports(1)[0]
    spec = write_spec(rt, "tokens", policy=rt.last_exit, access=access, node_extra=metrics, http_port=http_port)
    with running(spec):
        import requests

        x = rt.images[:2]
        body = {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        url = f"http://127.0.0.1:{http_port}/v2/models/distree/infer"
        r = requests.post(url, json=body, timeout=30)
        assert (
            r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "bearer token" in r.json()["error"]
        )
        r = requests.post(url, json=body, timeout=30, headers={"Authorization": "Bearer alice-token"})
        assert r.status_code == 200, r.text
        assert requests.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=10).status_code == 200
        node2 = spec.nodes[1].address
        with make_channel(node2, None) as ch:
            stub = node_pb2_grpc.ChainNodeStub(ch)
            with pytest.raises(grpc.RpcError) as ei:
                stub.Forward(node_pb2.ForwardRequest(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "needs the chain token" in ei.value.details()
            with pytest.raises(grpc.RpcError) as ei:
                stub.Forward(node_pb2.ForwardRequest(), timeout=10, metadata=[(TOKEN_METADATA, b"wrong")])
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            stream = ch.stream_stream("/distree.node.v1.ChainNode/ForwardStream")
            for meta in (None, [(TOKEN_METADATA, b"wrong")]):
                with pytest.raises(grpc.RpcError) as ei:
                    list(stream(iter([b"x"]), timeout=10, metadata=meta))
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert node_info(node2, chain_token=b"s3cret-chain").node == 2
        # the chain itself carries the token: every request runs all four nodes, nothing degraded
        with ClusterClient(spec.nodes[0].address, token="bob-token") as c:
            r = c.infer(rt.images[:6])
        np.testing.assert_array_equal(r.exit_node, 4)
        assert not r.degraded.any()
        for token in (None, "mallory"):
            with ClusterClient(spec.nodes[0].address, token=token) as c, pytest.raises(grpc.RpcError) as ei:
                c.infer(rt.images[:1])
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # refusals are counted by code
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{spec.nodes[1].metrics_port}/metrics").read().decode()
        assert 'distree_rejected_total{code="UNAUTHENTICATED",node="2"} 4.0' in text
        text1 = urllib.request.urlopen(f"http://127.0.0.1:{spec.nodes[0].metrics_port}/metrics").read().decode()
        assert 'distree_rejected_total{code="UNAUTHENTICATED",node="1"} 3.0' in text1  # 1 HTTP + 2 gRPC
        status = subprocess.run(
            [sys.executable, "-m", "distree", "cluster", "status", "--spec", str(spec.path), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        assert all(json.loads(line)["serving"] for line in status.stdout.splitlines())


def _ports(n: int) -> list[int]:
    from distree.runtime.cluster import free_ports

    return free_ports(n)


def _spec(rt, **extra):
    base = {"checkpoint": str(rt.checkpoint), "policy": str(rt.policy)}
    nodes = [{"address": f"127.0.0.1:{7000 + k}"} for k in range(1, 4)]
    return parse_spec({**base, "nodes": nodes, **extra})


def test_exposed_nodes_without_protection_are_refused(rt, tmp_path):
    nodes = [{"address": f"10.0.0.{k}:7001"} for k in range(1, 3)]
    base = {"checkpoint": str(rt.checkpoint), "policy": str(rt.policy), "nodes": nodes}
    with pytest.raises(SpecError) as ei:
        parse_spec(base, tmp_path / "s.toml")
    assert "Forward/Info have no protection" in str(ei.value) and "token_file" in str(ei.value)
    assert parse_spec({**base, "access": {"allow_unauthenticated": True}}).access.allow_unauthenticated
    token = _secret(tmp_path / "t", "x")
    assert parse_spec({**base, "access": {"token_file": token}}).access.token_file is not None


def test_a_token_file_others_can_read_is_refused(rt, tmp_path):
    p = tmp_path / "chain.token"
    p.write_text("x")
    p.chmod(0o644)
    spec = _spec(rt, access={"token_file": str(p)})
    with pytest.raises(SpecError, match="readable by other users"):
        AccessControl(spec, 2)


@pytest.mark.parametrize(
    ("method", "ids", "meta", "verdict"),
    [
        ("/distree.node.v1.ChainNode/Forward", ["distree://node/1"], {}, None),
        ("/distree.node.v1.ChainNode/Forward", ["distree://node/2"], {}, "PERMISSION_DENIED"),
        ("/distree.node.v1.ChainNode/Forward", ["distree://client/c"], {}, "PERMISSION_DENIED"),
        ("/distree.node.v1.ChainNode/Forward", [], {}, "PERMISSION_DENIED"),
        ("/distree.node.v1.ChainNode/Info", ["distree://operator/ops"], {}, None),
        ("/inference.GRPCInferenceService/ModelInfer", ["distree://client/c"], {}, None),
        ("/inference.GRPCInferenceService/ModelInfer", ["distree://node/1"], {}, "PERMISSION_DENIED"),
        ("/grpc.health.v1.Health/Check", [], {}, None),
    ],
)
def test_access_decisions_with_mutual_tls(rt, tmp_path, method, ids, meta, verdict):
    from distree.runtime import create_dev_pki

    create_dev_pki(tmp_path / "pki", 3)
    c = tmp_path / "pki"
    tls = {"ca": str(c / "ca.pem"), "client_auth": True}
    base = {"checkpoint": str(rt.checkpoint), "policy": str(rt.policy), "tls": tls}
    nodes = [
        {"address": f"10.0.0.{k}:7001", "cert": str(c / f"node{k}.pem"), "key": str(c / f"node{k}.key")}
        for k in (1, 2, 3)
    ]
    acl = AccessControl(parse_spec({**base, "nodes": nodes}), 2)
    got = acl.decide(method, meta, ids)
    assert (got[0] if got else None) == verdict, got


def test_keys_are_private_from_creation_and_certificates_carry_roles(tmp_path):
    import os

    from cryptography import x509

    from distree.runtime import create_dev_pki

    old = os.umask(0)
    try:
        paths = create_dev_pki(tmp_path, 2)
    finally:
        os.umask(old)
    for name in ("ca", "node1", "node2", "client", "operator"):
        assert (tmp_path / f"{name}.key").stat().st_mode & 0o777 == 0o600, name
        assert (tmp_path / f"{name}.pem").stat().st_mode & 0o777 == 0o644, name
    assert not list(tmp_path.glob(".*.tmp"))
    want = {"node2": "distree://node/2", "client": "distree://client/client", "operator": "distree://operator/operator"}
    for name, uri in want.items():
        cert = x509.load_pem_x509_certificate(paths[name].read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]

    def issue(*extra: str) -> subprocess.CompletedProcess:
        args = ["certs", "issue", "--ca-dir", str(tmp_path), "--name", "edge3", "--host", "10.0.0.3", *extra]
        return subprocess.run([sys.executable, "-m", "distree", *args], capture_output=True, text=True)

    r = issue("--role", "node")
    assert r.returncode != 0 and "--role node needs --tier K" in r.stdout + r.stderr
    r = issue("--role", "node", "--tier", "3")
    assert r.returncode == 0 and "distree://node/3" in r.stdout, r.stdout + r.stderr


def test_bytes_that_are_not_a_message_get_invalid_argument(rt, tmp_path):
    import os

    spec = write_spec(rt, "garbage", policy=rt.last_exit)
    with running(spec):
        for address, method in (
            (spec.nodes[1].address, "/distree.node.v1.ChainNode/Forward"),
            (spec.nodes[0].address, "/inference.GRPCInferenceService/ModelInfer"),
        ):
            with make_channel(address, None) as ch:
                rpc = ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
                for data in (os.urandom(200), b"\xff" * 64):
                    with pytest.raises(grpc.RpcError) as ei:
                        rpc(data, timeout=10)
                    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, ei.value.details())
                    assert "not a valid protobuf message" in ei.value.details()
        with ClusterClient(spec.nodes[0].address) as c:  # still serving
            r = c.infer(rt.images[:1])
            assert int(r.exit_node[0]) == 4 or r.degraded[0], r


def test_inputs_far_outside_the_normalised_range_are_refused(rt, tmp_path):
    spec = write_spec(rt, "range", policy=rt.last_exit)
    from distree.checkpoint import read_sidecar

    norm = read_sidecar(rt.checkpoint)["normalization"]
    m = np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
    good = ((rt.images[:2].astype(np.float32) / 255 - m) / s).astype(np.float32)
    with running(spec), ClusterClient(spec.nodes[0].address) as c:
        assert (c.infer(good).exit_node == 4).all()
        for bad in (np.full_like(good, 3e38), np.full_like(good, -1e6)):
            with pytest.raises(grpc.RpcError) as ei:
                c.infer(bad)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "outside" in ei.value.details() and "normalised" in ei.value.details()
        assert (c.infer(good).exit_node == 4).all()
