"""One open ``distree.node.v1.ChainNode/ForwardStream`` call to one replica of the successor's tier.

A :class:`ForwardStream` carries the raw frames of :mod:`~distree.runtime.frames` both ways: forwards
are written by one writer task (one write at a time, timing the large ones for the link's backlog),
replies are read by one reader task and matched to their forward by request id. A forward no longer
waited for is dropped if unsent, else cancelled with a cancel frame. When the call ends, every forward
still waiting on it fails (as UNAVAILABLE, so :class:`~distree.runtime.streams.StreamTransport` sends
it again to another replica, unless the call itself was refused) and its
:class:`~distree.runtime.replica.Replica` is told.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import grpc

from . import frames
from .estimates import Ewma
from .transport import rpc_error

if TYPE_CHECKING:
    from .replica import Replica

log = logging.getLogger(__name__)

METHOD = "/distree.node.v1.ChainNode/ForwardStream"
#: frames at least this large time the stream's write rate (smaller ones measure call overhead, not the link)
BACKLOG_MIN_BYTES = 64 * 1024
#: how a stream can end that would end a new one the same way (not a replica's failure)
_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class ForwardStream:
    """One open ``ForwardStream`` call to a replica: a writer task, a reader task, forwards in flight."""

    def __init__(self, replica: Replica) -> None:
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
