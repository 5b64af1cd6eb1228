"""One replica of the successor's tier as the stream transport sees it: its own grpc.aio channel, its
:class:`~distree.runtime.forward_stream.ForwardStream`, a health watch, and its state.

A :class:`Replica` is *ok* (it takes forwards), *down* (its stream or connection failed), *suspect*
(a forward ran past the link's hop timeout) or *gone* (no longer among the addresses a DNS name
resolves to). A down or suspect replica is probed with health checks (the channel reconnects with
gRPC's backoff) and is ok again once it serves. The ``grpc.health.v1`` ``Watch`` follows its status:
one that turns NOT_SERVING drains, gets no new forwards, and its stream is half-closed so the rows
already on it are still answered. ``Info`` stays a unary protobuf call on the same channel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from .forward_stream import ForwardStream
from .protos import node_pb2
from .tls import ClientTLS
from .transport import channel_options

if TYPE_CHECKING:
    from .streams import StreamTransport

log = logging.getLogger(__name__)

INFO = "/distree.node.v1.ChainNode/Info"


class Replica:
    """One replica of the successor's tier: its channel, stream, health watch and state."""

    def __init__(
        self, transport: StreamTransport, address: str, tls: ClientTLS | None, max_bytes: int, authority: str
    ) -> None:
        from grpc_health.v1 import health_pb2_grpc

        self.transport = transport
        self.address = address
        self.metadata = transport.metadata
        opts = channel_options(max_bytes)
        if authority != address:  # every replica of a tier is checked against one name (as one balanced channel)
            opts.append(("grpc.default_authority", authority))
        if tls is None:
            self.channel = grpc.aio.insecure_channel(address, options=opts)
        else:
            self.channel = grpc.aio.secure_channel(address, tls.credentials(), options=opts + tls.options())
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.info = self.channel.unary_unary(
            INFO,
            request_serializer=node_pb2.InfoRequest.SerializeToString,
            response_deserializer=node_pb2.InfoResponse.FromString,
        )
        self.origin = address  # the spec's address it came from (a DNS name resolves to several replicas)
        self.stream: ForwardStream | None = None
        self.serving: bool | None = None  # the health watch's last word (None: not heard yet)
        self.state = "ok"  # ok | down (its stream or connection failed) | suspect (ran past the hop timeout)
        self._repair: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None

    def usable(self) -> bool:
        return self.state == "ok" and self.serving is not False

    def start(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watching())

    def open(self) -> ForwardStream:
        s = self.stream
        if s is None or s.broken or s.closing:
            s = self.stream = ForwardStream(self)
        return s

    # ---------------------------------------------------------------- state
    def stream_ended(self, stream: ForwardStream, e: grpc.aio.AioRpcError) -> None:
        if self.stream is stream:
            self.stream = None
        if e.code() == grpc.StatusCode.UNAVAILABLE and not stream.closing:
            self.set_aside("down", f"{e.code().name}: {e.details()}")

    def set_aside(self, state: str, why: str) -> None:
        """Stop picking this replica until a health check says it serves again."""
        if self.state == "ok":
            log.warning(
                "replica %s of the successor is %s (%s)",
                self.address,
                state,
                why,
                extra={"event": "replica_" + state, "successor": self.address},
            )
        if state == "suspect" and self.stream is not None:
            self.stream.close_writing()  # rows already sent may still be answered; new ones go elsewhere
            self.stream = None
        self.state = state
        if self._repair is None or self._repair.done():
            self._repair = asyncio.get_running_loop().create_task(self._repairing())

    async def probe(self, timeout: float) -> bool:
        """One health check (waiting for a connection); serving replicas are usable again."""
        from grpc_health.v1 import health_pb2

        try:
            r = await self.health.Check(  # type: ignore[attr-defined]  # types-grpcio-health-checking lacks HealthStub.Check
                health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True, metadata=None
            )
        except grpc.aio.AioRpcError:
            return False
        serving = r.status == health_pb2.HealthCheckResponse.SERVING
        self.serving = serving
        if serving and self.state != "ok":
            log.warning("replica %s of the successor is back", self.address, extra={"event": "replica_up"})
            self.state = "ok"
        return serving and self.state == "ok"

    async def _repairing(self) -> None:
        backoff, longest = self.transport.backoff_s
        while self.state != "ok":
            await asyncio.sleep(backoff)
            if await self.probe(max(0.5, backoff)):
                return
            backoff = min(backoff * 2, longest)

    async def _watching(self) -> None:
        """Follow the replica's health status (Watch). A replica that turns NOT_SERVING is draining: the
        watch is ended (its server would otherwise cancel it on stopping) and health checks take over
        until it serves again."""
        from grpc_health.v1 import health_pb2

        first, longest = self.transport.backoff_s
        backoff = first
        while True:
            try:
                if self.serving is False and not await self.probe(max(0.5, backoff)):
                    raise _NotYet
                call = self.health.Watch(  # type: ignore[attr-defined]  # types-grpcio-health-checking lacks HealthStub.Watch
                    health_pb2.HealthCheckRequest(service=""), wait_for_ready=True
                )
                try:
                    async for r in call:
                        backoff = first
                        if r.status != health_pb2.HealthCheckResponse.SERVING:
                            self.drains()
                            break
                        self.serving = True
                finally:
                    call.cancel()
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, _NotYet):
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, longest)

    def drains(self) -> None:
        """The replica reports NOT_SERVING: no new forwards; those on its stream are still answered."""
        if self.serving is not False:
            log.info("replica %s of the successor drains", self.address, extra={"event": "replica_drains"})
        self.serving = False
        if self.stream is not None:
            self.stream.close_writing()
            self.stream = None

    def retire(self, after_s: float) -> None:
        """No longer one of the tier's addresses (DNS): no new forwards; closed ``after_s`` seconds later,
        once those on it are answered."""
        self.state = "gone"
        for t in (self._watch, self._repair):
            if t is not None:
                t.cancel()
        if self.stream is not None:
            self.stream.close_writing()
        asyncio.get_running_loop().call_later(after_s, lambda: asyncio.ensure_future(self.close()))

    async def close(self) -> None:
        for t in (self._watch, self._repair):
            if t is not None:
                t.cancel()
        if self.stream is not None:
            self.stream.close()
        await self.channel.close()


class _NotYet(Exception):
    """The replica does not serve yet."""
