"""A cluster with mutual TLS on every channel and a slow last node: TLS refusals and QoS deadlines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.runtime import ClientTLS, ClusterClient, create_dev_pki, node_info, spec_client_tls
from distree.runtime.cluster import free_ports
from distree.runtime.rest import http_url
from distree.runtime.spec import ClusterSpec

pytestmark = pytest.mark.xdist_group("runtime-tls")


@pytest.fixture(scope="module")
def tls_cluster(rt, tmp_path_factory) -> Iterator[tuple[ClusterSpec, Path]]:
    d = tmp_path_factory.mktemp("pki")
    certs = d / "certs"
    create_dev_pki(certs, 4)
    create_dev_pki(d / "other", 1)  # a CA the cluster does not trust
    tls = {
        "ca": str(certs / "ca.pem"),
        "client_auth": True,
        "client_cert": str(certs / "client.pem"),
        "client_key": str(certs / "client.key"),
    }
    extra = {k: {"cert": str(certs / f"node{k}.pem"), "key": str(certs / f"node{k}.key")} for k in range(1, 5)}
    # node 4 emulates a device 500x slower than this CPU: the whole chain takes far longer than nodes 1-3
    extra[4]["speed"] = {"kind": "constant", "factor": 0.002}
    extra[2]["metrics_port"] = free_ports(1)[0]
    spec = write_spec(rt, "mtls", policy=rt.last_exit, tls=tls, node_extra=extra, http_port=free_ports(1)[0])
    with running(spec):
        yield spec, d


def test_mutual_tls_round_trip_and_refusals(rt, tls_cluster):
    spec, d = tls_cluster
    addr = spec.nodes[0].address
    with ClusterClient(addr, tls=spec_client_tls(spec)) as c:
        r = c.infer(rt.images[:12])  # node 1 -> 2 -> 3 -> 4, every hop over mutual TLS
    np.testing.assert_array_equal(r.exit_node, 4)
    np.testing.assert_array_equal(r.predictions, rt.trace.predictions[:12, 3])
    ca = (d / "certs" / "ca.pem").read_bytes()
    refused = {
        "no client certificate": ClientTLS(ca=ca),
        "certificate from another CA": ClientTLS(
            ca=ca, cert=(d / "other" / "client.pem").read_bytes(), key=(d / "other" / "client.key").read_bytes()
        ),
    }
    for why, t in refused.items():
        with ClusterClient(addr, tls=t) as c, pytest.raises(grpc.RpcError) as ei:
            c.infer(rt.images[:1], rpc_timeout_s=10)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, why
    with ClusterClient(addr) as c, pytest.raises(grpc.RpcError):  # plaintext against a TLS port
        c.infer(rt.images[:1], rpc_timeout_s=10)
    with pytest.raises(grpc.RpcError):  # node 2 refuses a caller without a certificate, too
        node_info(spec.nodes[1].address, tls=ClientTLS(ca=ca))


def test_http_over_mutual_tls(rt, tls_cluster):
    import requests

    spec, d = tls_cluster
    url, certs = http_url(spec), d / "certs"
    assert url.startswith("https://")
    mine = {"verify": str(certs / "ca.pem"), "cert": (str(certs / "client.pem"), str(certs / "client.key"))}
    assert requests.get(f"{url}/v2/health/ready", timeout=10, **mine).json() == {"ready": True}
    x = rt.images[:2]
    body = {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    r = requests.post(f"{url}/v2/models/distree/infer", json=body, timeout=30, **mine)
    assert r.status_code == 200
    assert {o["name"]: o["data"] for o in r.json()["outputs"]}["EXIT_NODE"] == [4, 4]  # every hop over mutual TLS
    # the deadline parameters work over HTTP too: node 4 is far too slow for 60 ms, an earlier node answers
    for params in ({"timeout": 60_000}, {"deadline_unix_us": int((time.time() + 0.06) * 1e6)}):
        r = requests.post(f"{url}/v2/models/distree/infer", json={**body, "parameters": params}, timeout=30, **mine)
        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert r.status_code == 200 and max(out["EXIT_NODE"]) < 4 and all(out["DEGRADED"]), (params, r.json())
        assert set(r.json()["parameters"]["degraded_reasons"].split(",")) <= {"deadline", "successor-timeout"}
    other = {
        "verify": str(certs / "ca.pem"),
        "cert": (str(d / "other" / "client.pem"), str(d / "other" / "client.key")),
    }
    for why, kw in {"no client certificate": {"verify": str(certs / "ca.pem")}, "another CA": other}.items():
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{url}/v2/health/ready", timeout=10, **kw)
            pytest.fail(f"{why}: accepted")
    with pytest.raises(requests.exceptions.RequestException):  # plaintext against the TLS port
        requests.get(url.replace("https://", "http://") + "/v2/health/ready", timeout=10)
    # roles hold over HTTP too: a node's certificate cannot use the inference service
    node = {"verify": str(certs / "ca.pem"), "cert": (str(certs / "node2.pem"), str(certs / "node2.key"))}
    r = requests.post(f"{url}/v2/models/distree/infer", json=body, timeout=30, **node)
    assert r.status_code == 403 and "not distree://node/2" in r.json()["error"]
    assert requests.get(f"{url}/v2/health/ready", timeout=10, **node).status_code == 200


def test_deadline_shorter_than_the_chain_gets_an_earlier_exit_in_time(rt, tls_cluster):
    spec, _ = tls_cluster
    x = rt.images[:1]
    with ClusterClient(spec.nodes[0].address, tls=spec_client_tls(spec)) as c:
        full = [c.infer(x) for _ in range(3)]
        assert all(int(r.exit_node[0]) == 4 and not r.degraded[0] for r in full)
        need = min(r.latency_s for r in full)
        deadline = max(need / 2, 0.05)
        assert deadline < need, f"the slow node should make the chain take > 100 ms, took {need * 1e3:.1f} ms"
        for _ in range(5):
            r = c.infer(x, deadline_s=deadline)
            assert int(r.exit_node[0]) < 4, "an earlier node must answer"
            assert bool(r.degraded[0]) and r.reasons[0] in ("deadline", "successor-timeout"), r.reasons
            assert r.latency_s < deadline, (r.latency_s, deadline)
        # without a deadline the same request still runs the whole chain
        assert int(c.infer(x).exit_node[0]) == 4


def _tls(d: Path, name: str) -> ClientTLS:
    c = d / "certs"
    return ClientTLS(
        ca=(c / "ca.pem").read_bytes(), cert=(c / f"{name}.pem").read_bytes(), key=(c / f"{name}.key").read_bytes()
    )


def _forward(address: str, tls: ClientTLS) -> grpc.StatusCode:
    from distree.runtime.client import make_channel
    from distree.runtime.protos import node_pb2, node_pb2_grpc

    with make_channel(address, tls) as ch:
        try:
            node_pb2_grpc.ChainNodeStub(ch).Forward(node_pb2.ForwardRequest(), timeout=10)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def _stream(address: str, tls: ClientTLS) -> grpc.StatusCode:
    """Open node ``address``'s ForwardStream and send one frame that is not a forward: an admitted caller
    gets an error frame for it (INVALID_ARGUMENT), a refused one the call's status."""
    from distree.runtime import frames
    from distree.runtime.client import make_channel
    from distree.runtime.forward_stream import METHOD

    with make_channel(address, tls) as ch:
        try:
            for r in ch.stream_stream(METHOD)(iter([b"not a frame"]), timeout=10):
                return grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == frames.decode_error(r)[0]))
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def test_roles_decide_who_may_call_what(tls_cluster):
    """Certificates carry roles: only node 1's identity may call node 2's Forward; a client certificate of
    the same CA is refused there, and a node certificate cannot use the inference service."""
    spec, d = tls_cluster
    node2 = spec.nodes[1].address
    # the predecessor is admitted (its empty request is then refused as malformed)
    assert _forward(node2, _tls(d, "node1")) == grpc.StatusCode.INVALID_ARGUMENT
    for who in ("client", "node3", "operator"):
        assert _forward(node2, _tls(d, who)) == grpc.StatusCode.PERMISSION_DENIED, who
    # the node stream (what the chain itself uses) has the same rule as Forward
    assert _stream(node2, _tls(d, "node1")) == grpc.StatusCode.INVALID_ARGUMENT
    for who in ("client", "node3", "operator"):
        assert _stream(node2, _tls(d, who)) == grpc.StatusCode.PERMISSION_DENIED, who
    assert node_info(node2, tls=_tls(d, "operator")).node == 2
    with pytest.raises(grpc.RpcError) as ei:
        node_info(node2, tls=_tls(d, "client"))
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admits predecessor/operator, not distree://client/client" in ei.value.details()
    with ClusterClient(spec.nodes[0].address, tls=_tls(d, "node2")) as c, pytest.raises(grpc.RpcError) as ei:
        c.infer(np.zeros((1, 1, 8, 8), np.uint8), rpc_timeout_s=10)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _listening_hosts(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp, IPv4)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            hosts.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return hosts


def test_metrics_are_served_over_tls_on_the_nodes_host_only(tls_cluster):
    import ssl
    import urllib.error
    import urllib.request

    spec, d = tls_cluster
    port = spec.nodes[1].metrics_port
    assert _listening_hosts(port) == {"127.0.0.1"}
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    c = d / "certs"
    ctx = ssl.create_default_context(cafile=str(c / "ca.pem"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):  # no scraper certificate
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=ctx).read()
    ctx.load_cert_chain(str(c / "operator.pem"), str(c / "operator.key"))
    text = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=ctx).read().decode()
    assert "distree_requests_total" in text
