"""The gRPC side of the node-to-node link: the options of every node channel and server, one balanced
channel over a tier's replicas, the exception a failed call raises, and :class:`GrpcTransport`, the
:class:`~distree.runtime.hop.Transport` of unary ``Forward`` calls (kept for tools and tests; node
processes use :class:`~distree.runtime.streams.StreamTransport`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from .balancing import balanced_options
from .hop import Hop
from .protos import node_pb2, node_pb2_grpc
from .tls import ClientTLS


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options of every node channel and server: explicit message limits, fast reconnection, no retries."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]


#: the calls a node retries on another replica of its successor's tier (both idempotent)
RETRIED = (("distree.node.v1.ChainNode", "Forward"), ("distree.node.v1.ChainNode", "Info"))


def make_aio_channel(address: str | Sequence[str], tls: ClientTLS | None, max_message_bytes: int) -> grpc.aio.Channel:
    """One channel over every address of a tier: round robin, health checking, retries (:mod:`.balancing`)."""
    addrs = [address] if isinstance(address, str) else list(address)
    target, opts = balanced_options(addrs, channel_options(max_message_bytes), RETRIED, max_message_bytes)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, tls.credentials(), options=opts + tls.options())


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    """The exception a grpc.aio call raises when it ends with ``code``."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details or code.name)


class GrpcTransport:
    """Unary ``Forward`` calls over a persistent grpc.aio channel to tier K+1 (ChainNode + health), over
    every replica's address: a call goes to a healthy replica (round robin), and one that fails as
    unavailable is sent again to another; it fails only when no replica is usable. (Nodes use
    :class:`~distree.runtime.streams.StreamTransport`; this one remains for tools and tests.)"""

    def __init__(
        self,
        address: str | Sequence[str],
        tls: ClientTLS | None,
        max_message_bytes: int,
        *,
        token: bytes | None = None,
    ) -> None:
        from grpc_health.v1 import health_pb2_grpc

        from .auth import TOKEN_METADATA

        # the chain's shared secret on every internal call when there is no mutual TLS (see .auth)
        self.metadata = ((TOKEN_METADATA, token),) if token else None
        self.address = address if isinstance(address, str) else ",".join(address)
        self.channel = make_aio_channel(address, tls, max_message_bytes)
        self.stub = node_pb2_grpc.ChainNodeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def forward(self, hop: Hop, timeout: float) -> node_pb2.ForwardResponse:
        call = self.stub.Forward(hop.request(), timeout=hop.timeout_s, metadata=self.metadata)
        if timeout >= hop.timeout_s:
            return await call
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within the hop timeout {timeout:.3f} s"
            ) from None

    async def info(self, timeout: float) -> node_pb2.InfoResponse:
        return await self.stub.Info(node_pb2.InfoRequest(), timeout=timeout, metadata=self.metadata)

    async def healthy(self, timeout: float) -> bool:
        from grpc_health.v1 import health_pb2

        # wait_for_ready: a channel backing off after a failed connection tries again instead of failing at once
        r = await self.health.Check(  # type: ignore[attr-defined]  # types-grpcio-health-checking lacks HealthStub.Check
            health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
        )
        return r.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self.channel.close()
