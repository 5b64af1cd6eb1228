"""The node-to-node transport: one long-lived ``ForwardStream`` per replica of tier K+1, raw frames.

:class:`StreamTransport` is the :class:`~distree.runtime.hop.Transport` of a node process. It keeps,
per replica of the successor's tier (a :class:`~distree.runtime.replica.Replica`), its own grpc.aio
channel and on it

- one bidirectional ``distree.node.v1.ChainNode/ForwardStream`` call
  (:class:`~distree.runtime.forward_stream.ForwardStream`) carrying the raw frames of
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

Info and health stay unary protobuf calls on the same channels. This module owns the replica set
(round robin, DNS names resolved again every :data:`RESOLVE_S` seconds) and a forward's sends and
resends; one replica's channel and state are :mod:`~distree.runtime.replica`'s, one stream's frames
:mod:`~distree.runtime.forward_stream`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
from collections.abc import Sequence
from typing import Any

import grpc

from . import frames
from .hop import Hop
from .protos import node_pb2
from .replica import Replica
from .tls import ClientTLS
from .transport import rpc_error

log = logging.getLogger(__name__)

#: sends of one forward (the first included) over replicas whose stream broke under it
MAX_ATTEMPTS = 4
#: seconds between resolutions of the DNS names among a tier's addresses (pods come and go)
RESOLVE_S = 30.0
#: a replica never reached yet (its channel's first connection failed: it was still starting) is waited
#: for this long, within the forward's time, before the rows are answered without it
FIRST_CONTACT_WAIT_S = 2.0
_CODES = {c.value[0]: c for c in grpc.StatusCode}


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
        self.replicas = [Replica(self, a, tls, max_message_bytes, addrs[0]) for a in addrs]
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
                r = Replica(self, t, self.tls, self.max_message_bytes, self.authority)
                r.origin = origin
                self.replicas.append(r)
                r.start()
        for a, r in current.items():
            if a not in targets:
                self.replicas.remove(r)
                r.retire(RESOLVE_S)
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

    def _pick(self, avoid: Replica | None = None) -> Replica | None:
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
        last: Replica | None = None
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
                if rep.serving is None and await rep.probe(min(FIRST_CONTACT_WAIT_S, end - loop.time())):
                    last = None  # never reached before (it was still starting), and now it serves: try it again
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


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


__all__ = ["StreamTransport"]
