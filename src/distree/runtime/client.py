"""A small synchronous client for a distree cluster (node 1's Open Inference Protocol) and node health.

Any KServe v2 gRPC client works against node 1 (e.g. ``tritonclient.grpc``); this one adds the
distree outputs (exit node, degraded flag) as numpy arrays and a bounded-concurrency ``infer_many``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.message import Message

from .balancing import balanced_options
from .kserve import INPUT, OUTPUTS, SERVICE
from .protos import kserve_v2_pb2 as pb
from .protos import node_pb2, node_pb2_grpc
from .spec import DEFAULT_MAX_MESSAGE
from .tls import ClientTLS

_DT = {"FP32": np.float32, "INT32": np.int32, "BOOL": np.bool_, "UINT8": np.uint8}


@dataclass
class InferResult:
    probs: np.ndarray  # (B, K)
    exit_node: np.ndarray  # (B,) 1-based
    degraded: np.ndarray  # (B,) bool
    score: np.ndarray  # (B,)
    reasons: list[str] = field(default_factory=list)
    latency_s: float = float("nan")
    request_id: str = ""

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=-1)


#: the calls a client sends again to another replica of node 1 when one fails as unavailable (idempotent)
RETRIED = tuple((SERVICE, m) for m in ("ModelInfer", "ModelMetadata", "ModelReady", "ServerReady", "ServerLive"))


def make_channel(
    address: str | Sequence[str],
    tls: ClientTLS | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    *,
    retries: bool = True,
) -> grpc.Channel:
    """A channel over one address or every replica of node 1: round robin over the healthy ones, and (with
    ``retries``) a call that fails as unavailable is sent again to another (:mod:`.balancing`)."""
    addrs = [address] if isinstance(address, str) else list(address)
    base = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    target, opts = balanced_options(addrs, base, RETRIED, max_message_bytes, retries=retries)
    if tls is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, tls.credentials(), options=opts + tls.options())


def build_request(
    x: np.ndarray,
    *,
    model_name: str = "distree",
    request_id: str = "",
    timeout_s: float | None = None,
    outputs: Sequence[str] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInfer request for images ``x`` (B, C, H, W): float32 normalised, or uint8 pixels."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.uint8:
        dt = "UINT8"
    else:
        x = x.astype(np.float32, copy=False)
        dt = "FP32"
    req = pb.ModelInferRequest(model_name=model_name, id=request_id)
    req.inputs.add(name=INPUT, datatype=dt, shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    for o in outputs or ():
        req.outputs.add(name=o)
    if timeout_s is not None:
        stamp_deadline(req, timeout_s)
    return req


def stamp_deadline(req: pb.ModelInferRequest, timeout_s: float) -> None:
    """Set the request's QoS deadline ``timeout_s`` from now: the relative ``timeout`` parameter, and the
    absolute deadline and send time (exact where clocks are synchronised; node 1 takes the earliest).
    Call it right before sending: a request built ahead of time would carry an earlier deadline."""
    now_us = int(time.time() * 1e6)
    req.parameters["timeout"].int64_param = max(1, int(timeout_s * 1e6))
    req.parameters["deadline_unix_us"].int64_param = now_us + max(1, int(timeout_s * 1e6))
    req.parameters["sent_unix_us"].int64_param = now_us


def parse_response(resp: pb.ModelInferResponse) -> InferResult:
    arrays: dict[str, np.ndarray] = {}
    for i, o in enumerate(resp.outputs):
        arrays[o.name] = np.frombuffer(resp.raw_output_contents[i], dtype=_DT[o.datatype]).reshape(tuple(o.shape))
    b = next(iter(arrays.values())).shape[0] if arrays else 0
    reasons = (
        resp.parameters["degraded_reasons"].string_param.split(",")
        if ("degraded_reasons" in resp.parameters)
        else [""] * b
    )
    return InferResult(
        probs=arrays.get("PROBS", np.zeros((b, 0), np.float32)),
        exit_node=arrays.get("EXIT_NODE", np.zeros(b, np.int32)),
        degraded=arrays.get("DEGRADED", np.zeros(b, bool)),
        score=arrays.get("SCORE", np.zeros(b, np.float32)),
        reasons=reasons,
        request_id=resp.id,
    )


class ClusterClient:
    """Client of node 1 (Open Inference Protocol): one address, or the addresses of every node-1 replica
    (calls go round robin to the healthy ones; one refused or cut off is retried on another)."""

    def __init__(
        self,
        address: str | Sequence[str],
        *,
        tls: ClientTLS | None = None,
        model_name: str = "distree",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        token: str | None = None,
    ) -> None:
        """``address``: node 1, or every ingress replica's address (a call refused or unavailable on one
        is retried on another); ``token``: bearer token for an inference service that asks for one
        (``[access] client_tokens_file``)."""
        self.address = address if isinstance(address, str) else ",".join(address)
        self.model_name = model_name
        self.channel = make_channel(address, tls, max_message_bytes)
        if token:
            from .auth import MetadataInterceptor, credential_metadata

            self.channel = grpc.intercept_channel(self.channel, MetadataInterceptor(credential_metadata(token=token)))

        def rpc(name: str, req: type[Message], resp: type[Message]):
            return self.channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=req.SerializeToString, response_deserializer=resp.FromString
            )

        self._infer = rpc("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        self._ready = rpc("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse)
        self._live = rpc("ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)
        self._meta = rpc("ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def live(self, timeout_s: float = 5.0) -> bool:
        return self._live(pb.ServerLiveRequest(), timeout=timeout_s).live

    def ready(self, timeout_s: float = 5.0) -> bool:
        return self._ready(pb.ServerReadyRequest(), timeout=timeout_s).ready

    def metadata(self, timeout_s: float = 5.0) -> pb.ModelMetadataResponse:
        return self._meta(pb.ModelMetadataRequest(name=self.model_name), timeout=timeout_s)

    def infer(
        self,
        x: np.ndarray,
        *,
        deadline_s: float | None = None,
        rpc_timeout_s: float | None = 60.0,
        request_id: str = "",
    ) -> InferResult:
        """Send images (B, C, H, W); ``deadline_s`` is the request's QoS deadline (the ``timeout`` parameter)."""
        req = build_request(x, model_name=self.model_name, request_id=request_id, timeout_s=deadline_s)
        t = time.perf_counter()
        resp = self._infer(req, timeout=rpc_timeout_s)
        res = parse_response(resp)
        res.latency_s = time.perf_counter() - t
        return res

    def infer_many(
        self,
        xs: Sequence[np.ndarray],
        *,
        concurrency: int = 16,
        deadline_s: float | None = None,
        rpc_timeout_s: float | None = 60.0,
    ) -> list[InferResult | grpc.RpcError]:
        """Send every ``xs[i]`` as its own request, at most ``concurrency`` in flight; results in order."""
        out: list[InferResult | grpc.RpcError | None] = [None] * len(xs)
        sem = threading.Semaphore(concurrency)
        done = threading.Event()
        left = [len(xs)]
        lock = threading.Lock()
        if not xs:
            return []

        def finish(i: int, t0: float, fut: grpc.Future) -> None:
            try:
                r = parse_response(fut.result())
                r.latency_s = time.perf_counter() - t0
                out[i] = r
            except grpc.RpcError as e:
                out[i] = e
            sem.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        for i, x in enumerate(xs):
            sem.acquire()
            req = build_request(x, model_name=self.model_name, request_id=str(i), timeout_s=deadline_s)
            t0 = time.perf_counter()
            fut = self._infer.future(req, timeout=rpc_timeout_s)
            fut.add_done_callback(lambda f, i=i, t0=t0: finish(i, t0, f))
        done.wait()
        return out  # type: ignore[return-value]


def infer_open_loop(
    client: ClusterClient,
    xs: Sequence[np.ndarray],
    arrival_s: Sequence[float],
    *,
    deadline_s: float | None = None,
    rpc_timeout_s: float | None = 60.0,
    sent_s: list[float] | None = None,
) -> list[InferResult | grpc.RpcError]:
    """Open-loop load: send ``xs[i]`` at ``arrival_s[i]`` seconds from now whatever the answers do (a
    Poisson stream, for instance); results in order, latency measured from each request's send time.
    ``sent_s``, if given, receives the times the requests really left (seconds from the start)."""
    if len(xs) != len(arrival_s):
        raise ValueError(f"need one arrival time per input, got {len(arrival_s)} for {len(xs)}")
    # built ahead (the send times stay on schedule); the deadline is stamped as each one leaves
    reqs = [build_request(x, model_name=client.model_name, request_id=str(i)) for i, x in enumerate(xs)]
    out: list[InferResult | grpc.RpcError | None] = [None] * len(xs)
    left = [len(xs)]
    lock = threading.Lock()
    done = threading.Event()
    if not xs:
        return []

    def finish(i: int, t_sent: float, fut: grpc.Future) -> None:
        try:
            r = parse_response(fut.result())
            r.latency_s = time.perf_counter() - t_sent
            out[i] = r
        except grpc.RpcError as e:
            out[i] = e
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    t0 = time.perf_counter()
    for i, req in enumerate(reqs):
        wait = t0 + float(arrival_s[i]) - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        if deadline_s is not None:
            stamp_deadline(req, deadline_s)
        t_sent = time.perf_counter()
        if sent_s is not None:
            sent_s.append(t_sent - t0)
        fut = client._infer.future(req, timeout=rpc_timeout_s)
        fut.add_done_callback(lambda f, i=i, t=t_sent: finish(i, t, f))
    done.wait()
    return out  # type: ignore[return-value]


def wait_healthy(address: str, *, tls: ClientTLS | None = None, timeout_s: float = 60.0) -> bool:
    """Poll the gRPC health service at ``address`` until SERVING or ``timeout_s``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + timeout_s
    with make_channel(address, tls, retries=False) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)  # type: ignore[attr-defined]  # types-grpcio-health-checking lacks HealthStub.Check
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def node_info(
    address: str, *, tls: ClientTLS | None = None, timeout_s: float = 5.0, chain_token: bytes | None = None
) -> node_pb2.InfoResponse:
    """A node's ``Info`` (with mutual TLS, ``tls`` must carry an operator or predecessor certificate;
    without it, ``chain_token`` is the spec's shared secret where one is set)."""
    md = (("x-distree-token", chain_token),) if chain_token else None
    with make_channel(address, tls, retries=False) as ch:
        return node_pb2_grpc.ChainNodeStub(ch).Info(node_pb2.InfoRequest(), timeout=timeout_s, metadata=md)


__all__ = [
    "OUTPUTS",
    "ClusterClient",
    "InferResult",
    "build_request",
    "infer_open_loop",
    "node_info",
    "parse_response",
    "wait_healthy",
]
