"""The node-to-node transport: one long-lived ``ForwardStream`` per replica of tier K+1, raw frames.

:class:`StreamTransport` is the :class:`~distree.runtime.hop.Transport` of a node process. It keeps,
per replica of the successor's tier, its own grpc.aio channel and on it

- one bidirectional ``distree.node.v1.ChainNode/ForwardStream`` call carrying the raw frames of
  :mod:`~distree.runtime.frames` both ways: forwards are written by one writer task (one write at a
  time), replies are read by one reader task and matched to their forward by request id;
- a ``grpc.health.v1`` ``Watch`` of the replica's status, so a replica that drains (NOT_SERVING) gets
  no new forwards; its stream is half-closed, and the rows already on it are still answered.

A forward goes to the next usable replica (round robin). Each waits for its answer on a local timer
(no gRPC deadline on the long-lived call); when the timer fires the forward fails with
DEADLINE_EXCEEDED and a cancel frame tells the replica not to send the answer. When a stream breaks,
every forward in flight on it is sent again to another usable replica (forwards are idempotent), or
fails with UNAVAILABLE when there is none: the link then answers those rows as
``successor-unavailable``, as for a failed unary call. A broken replica is probed with health checks
(the channel reconnects with gRPC's backoff) and used again once it serves. A forward that runs past
the link's hop timeout sets its replica aside as *suspect* (see :mod:`~distree.runtime.link`), probed
the same way, and is sent again to another replica while time is left.

Info and health stay unary protobuf calls on the same channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import grpc

from . import frames
from .estimates import Ewma
from .hop import Hop
from .protos import node_pb2
from .tls import ClientTLS
from .transport import channel_options, rpc_error

log = logging.getLogger(__name__)

METHOD = "/distree.node.v1.ChainNode/ForwardStream"
INFO = "/distree.node.v1.ChainNode/Info"
#: frames at least this large time the stream's write rate (smaller ones measure call overhead, not the link)
BACKLOG_MIN_BYTES = 64 * 1024
#: sends of one forward (the first included) over replicas whose stream broke under it
MAX_ATTEMPTS = 4
#: seconds between resolutions of the DNS names among a tier's addresses (pods come and go)
RESOLVE_S = 30.0
_CODES = {c.value[0]: c for c in grpc.StatusCode}
#: how a stream can end that would end a new one the same way (not a replica's failure)
_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class _Stream:
    """One open ``ForwardStream`` call to a replica: a writer task, a reader task, forwards in flight."""

    def __init__(self, replica: _Replica) -> None:
        self.replica = replica
        self.call: grpc.aio.StreamStreamCall[bytes, bytes] = replica.channel.stream_stream(METHOD)(
            metadata=replica.metadata
        )
        self.pending: dict[int, asyncio.Future] = {}
        self.out: deque[tuple[int, bytes]] = deque()
        self.wake = asyncio.Event()
        self.closing = False  # half-closed: no new forwards
        self.broken = False
        self.answered = 0  # replies taken from this stream
        self.queued = 0  # bytes handed to the stream and not yet written: the link's backlog
        self.rate = Ewma(0.2)  # bytes per second the writes take (measured on frames of 64 KiB and more)
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write())
        self.reader = loop.create_task(self._read())

    def send(self, rid: int, data: bytes, fut: asyncio.Future) -> None:
        self.pending[rid] = fut
        self.out.append((rid, data))
        self.queued += len(data)
        self.wake.set()

    def backlog_s(self) -> float:
        """Seconds the bytes queued on this stream still need at the measured write rate (0 before any
        large write was timed: on a fast link nothing queues)."""
        return self.queued / self.rate.value if self.queued and self.rate.n else 0.0

    def forget(self, rid: int) -> None:
        """The forward of ``rid`` is no longer waited for: drop it if unsent, else tell the replica."""
        if self.pending.pop(rid, None) is not None and not self.broken and not self.closing:
            self.out.append((0, frames.cancel_frame(rid)))
            self.wake.set()

    def close_writing(self) -> None:
        self.closing = True
        self.wake.set()

    async def _write(self) -> None:
        try:
            while True:
                while self.out:
                    rid, data = self.out.popleft()
                    if rid and rid not in self.pending:
                        self.queued -= len(data)
                        continue  # its caller gave up before it was sent
                    t = time.monotonic()
                    try:
                        await self.call.write(data)
                    finally:
                        self.queued -= len(data)
                    took = time.monotonic() - t
                    if len(data) >= BACKLOG_MIN_BYTES and took > 0:
                        self.rate.update(len(data) / took)
                if self.closing:
                    await self.call.done_writing()
                    return
                self.wake.clear()
                await self.wake.wait()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            self._break(e)
        except Exception as e:  # noqa: BLE001 - a write on a finished call (asyncio.InvalidStateError, UsageError)
            self._break(rpc_error(grpc.StatusCode.UNAVAILABLE, f"the stream to {self.replica.address} ended ({e})"))

    async def _read(self) -> None:
        err: grpc.aio.AioRpcError | None = None
        try:
            while True:
                r = await self.call.read()
                if r is grpc.aio.EOF:
                    break
                try:
                    kind, rid = frames.frame_kind(cast(bytes, r))  # the method has no deserializer: raw bytes
                except frames.BadFrame as e:
                    log.warning("bad frame from %s: %s", self.replica.address, e, extra={"event": "bad_frame"})
                    continue
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result((kind, r))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            err = e
        self._break(err or rpc_error(grpc.StatusCode.UNAVAILABLE, f"the stream to {self.replica.address} ended (EOF)"))

    def _break(self, e: grpc.aio.AioRpcError) -> None:
        """The stream is over: every forward still waiting on it fails with ``e``, as UNAVAILABLE (sent again
        to another replica) unless the call itself was refused (access, limits: another send would be too)."""
        if self.broken:
            return
        self.broken = True
        if e.code() not in _REFUSALS:
            e = rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                f"the stream to {self.replica.address} broke ({e.code().name}: {e.details()})",
            )
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(e)
        self.replica.stream_ended(self, e)
        self.writer.cancel()
        self.call.cancel()

    def close(self) -> None:
        self.closing = True
        self._break(rpc_error(grpc.StatusCode.UNAVAILABLE, "the link was closed"))
        self.reader.cancel()


class _Replica:
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
        self.stream: _Stream | None = None
        self.serving: bool | None = None  # the health watch's last word (None: not heard yet)
        self.state = "ok"  # ok | down (its stream or connection failed) | suspect (ran past the hop timeout)
        self._repair: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None

    def usable(self) -> bool:
        return self.state == "ok" and self.serving is not False

    def start(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watching())

    def open(self) -> _Stream:
        s = self.stream
        if s is None or s.broken or s.closing:
            s = self.stream = _Stream(self)
        return s

    # ---------------------------------------------------------------- state
    def stream_ended(self, stream: _Stream, e: grpc.aio.AioRpcError) -> None:
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

    def retire(self) -> None:
        """No longer one of the tier's addresses (DNS): no new forwards; closed once those on it are answered."""
        self.state = "gone"
        for t in (self._watch, self._repair):
            if t is not None:
                t.cancel()
        if self.stream is not None:
            self.stream.close_writing()
        asyncio.get_running_loop().call_later(RESOLVE_S, lambda: asyncio.ensure_future(self.close()))

    async def close(self) -> None:
        for t in (self._watch, self._repair):
            if t is not None:
                t.cancel()
        if self.stream is not None:
            self.stream.close()
        await self.channel.close()


class StreamTransport:
    """Raw forwards on one ``ForwardStream`` per replica of tier K+1 (see the module doc)."""

    def __init__(
        self,
        address: str | Sequence[str],
        tls: ClientTLS | None,
        max_message_bytes: int,
        *,
        token: bytes | None = None,
        backoff_s: tuple[float, float] = (0.05, 1.0),
    ) -> None:
        from .auth import TOKEN_METADATA

        addrs = [address] if isinstance(address, str) else list(dict.fromkeys(address))
        self.metadata = ((TOKEN_METADATA, token),) if token else None
        self.address = ",".join(addrs)
        self.backoff_s = backoff_s
        self.max_message_bytes = max_message_bytes
        self.tls = tls
        self.authority = addrs[0]
        self.replicas = [_Replica(self, a, tls, max_message_bytes, addrs[0]) for a in addrs]
        self._next = 0
        self._ids = itertools.count(1)
        self._rows = 1
        # addresses given as DNS names (a Kubernetes headless Service answers every ready pod): each
        # resolved address becomes a replica of its own, resolved again every RESOLVE_S seconds
        self.names = {a: n for a in addrs if (n := _dns_name(a)) is not None}
        self.getaddrinfo: Any = None  # the resolver (the event loop's by default)
        self._resolver: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None
        self._woken = 0.0

    def _start(self) -> None:
        for r in self.replicas:
            r.start()
        if self.names and self._resolver is None:
            self._resolver = asyncio.get_running_loop().create_task(self._resolving())

    async def _resolving(self) -> None:
        loop = asyncio.get_running_loop()
        resolve = self.getaddrinfo or loop.getaddrinfo
        while True:
            for addr, (host, port) in self.names.items():
                try:
                    infos = await resolve(host, int(port), type=socket.SOCK_STREAM)
                except OSError as e:
                    log.warning("cannot resolve %s: %s", host, e, extra={"event": "resolve_failed"})
                    continue
                v4 = [str(sa[0]) for fam, _, _, _, sa in infos if fam == socket.AF_INET]
                v6 = [str(sa[0]) for fam, _, _, _, sa in infos if fam == socket.AF_INET6]
                ips = list(dict.fromkeys(v4 or v6))
                if ips:
                    self._resolved(addr, [f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}" for ip in ips])
            self._wake = loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake, RESOLVE_S)

    def _resolved(self, origin: str, targets: list[str]) -> None:
        """The replicas of ``origin`` (a DNS name) are now ``targets``: add the new ones, retire the rest."""
        current = {r.address: r for r in self.replicas if r.origin == origin}
        if set(current) == set(targets):
            return
        for t in targets:
            if t not in current:
                r = _Replica(self, t, self.tls, self.max_message_bytes, self.authority)
                r.origin = origin
                self.replicas.append(r)
                r.start()
        for a, r in current.items():
            if a not in targets:
                self.replicas.remove(r)
                r.retire()
        log.info("%s resolves to %s", origin, ", ".join(targets), extra={"event": "resolved"})

    def _resolve_soon(self) -> None:
        """No replica is usable: resolve the names again now (at most once a second)."""
        w = self._wake
        now = asyncio.get_running_loop().time()
        if w is not None and not w.done() and now - self._woken >= 1.0:
            self._woken = now
            w.set_result(None)

    def _row_ids(self, n: int) -> list[int]:
        """Row ids unique on this transport (the successor tells its callers' rows apart by them)."""
        base = self._rows
        self._rows += n
        return list(range(base, base + n))

    def usable(self) -> bool:
        """Whether some replica may take forwards now."""
        return any(r.usable() for r in self.replicas)

    def backlog_s(self) -> float:
        """The wait behind what is queued on the least loaded usable replica's stream (its link backlog)."""
        waits = [r.stream.backlog_s() if r.stream is not None else 0.0 for r in self.replicas if r.usable()]
        return min(waits, default=0.0)

    def _pick(self, avoid: _Replica | None = None) -> _Replica | None:
        reps = self.replicas
        n = len(reps)
        for i in range(n):
            r = reps[(self._next + i) % n]
            if r.usable() and (r is not avoid or n == 1):
                self._next = (self._next + i + 1) % n
                return r
        return None

    async def forward(self, hop: Hop, timeout: float) -> frames.Reply:
        self._start()
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + timeout
        last_end = start + max(hop.timeout_s, timeout)  # the rows' deadline: no resend after it
        hung = timeout < hop.timeout_s  # the link's hop timeout, not the rows' deadline, ends the wait
        rid = next(self._ids)
        data = b"".join(
            frames.encode_forward(
                rid,
                h=hop.h,
                row_ids=self._row_ids(len(hop.ids)),
                row_deadlines=hop.deadline_unix_s,
                deadline_unix_s=hop.deadline_s,
                from_node=hop.from_node,
                state=hop.state,
            )
        )
        if len(data) > self.max_message_bytes:
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a forward of {len(data)} bytes exceeds max_message_bytes = {self.max_message_bytes}",
            )
        last: _Replica | None = None
        for attempt in range(MAX_ATTEMPTS):
            rep = self._pick(avoid=last)
            if rep is None:
                self._resolve_soon()
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"no replica of {self.address} is serving")
            if attempt:  # a new request id on the new stream
                rid = next(self._ids)
                buf = bytearray(data)
                frames.PREFIX.pack_into(buf, 0, frames.MAGIC, frames.VERSION, frames.FORWARD, rid)
                data = bytes(buf)
            stream = rep.open()
            fut = loop.create_future()
            stream.send(rid, data, fut)
            timer = loop.call_at(end, _expire, fut)
            try:
                kind, frame = await fut
            except TimeoutError:
                stream.forget(rid)
                now = loop.time()
                if hung:
                    rep.set_aside("suspect", f"no answer within the hop timeout of {timeout * 1000:.0f} ms")
                    if now < last_end and self._pick(avoid=rep) is not None:
                        end = min(now + timeout, last_end)  # time is left: another replica takes the rows
                        last = rep
                        continue
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"{rep.address} did not answer in time") from None
            except asyncio.CancelledError:
                stream.forget(rid)
                raise
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or loop.time() >= end:
                    raise
                last = rep  # its stream broke under the forward: send it to another replica
                continue
            finally:
                timer.cancel()
            if kind == frames.REPLY:
                try:
                    reply = frames.decode_reply(frame, hop.ids)
                    reply.first = stream.answered == 0
                    stream.answered += 1
                    return reply
                except frames.BadFrame as e:
                    raise rpc_error(grpc.StatusCode.INTERNAL, f"{rep.address} sent a bad reply: {e}") from None
            if kind == frames.ERROR:
                code, msg = frames.decode_error(frame)
                raise rpc_error(_CODES.get(code, grpc.StatusCode.UNKNOWN), msg)
            raise rpc_error(grpc.StatusCode.INTERNAL, f"{rep.address} answered a forward with a frame of kind {kind}")
        raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"the streams to {self.address} broke {MAX_ATTEMPTS} times")

    async def info(self, timeout: float) -> node_pb2.InfoResponse:
        self._start()
        rep = self._pick() or self.replicas[0]
        return await rep.info(node_pb2.InfoRequest(), timeout=timeout, metadata=self.metadata)

    async def healthy(self, timeout: float) -> bool:
        """Health-check every replica at once (waiting for connections); True if one is usable."""
        self._start()
        ok = await asyncio.gather(*(r.probe(timeout) for r in self.replicas))
        return any(ok) and self.usable()

    async def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        for r in self.replicas:
            with contextlib.suppress(Exception):
                await r.close()


def _dns_name(address: str) -> tuple[str, str] | None:
    """(host, port) of an address whose host is a DNS name (not an IP literal, not localhost)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host, port
    return None


class _NotYet(Exception):
    """The replica does not serve yet."""


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


__all__ = ["METHOD", "StreamTransport"]
