"""Admission of a node's requests under its ``max_inflight_bytes``: the memory a node holds for the
unary calls of ``ChainNode`` and the inference service (:class:`Admission`, a gRPC server
interceptor, counting in :class:`InflightBytes`).

A call reserves two message limits while its request is read and twice the request's size (its
message and the tensor decoded from it) until its answer leaves. A call that finds no room waits
(first come, first served) up to :data:`ADMIT_WAIT_S` or its deadline, unread, then gets
``RESOURCE_EXHAUSTED`` (counted in ``distree_rejected_total{code="RESOURCE_EXHAUSTED"}``); so does a
call whose request takes longer than :data:`READ_TIMEOUT_S` to arrive once it is being read.
Frames that an aborted call went through are cleared (:func:`release_frames`), so a refused
request's memory is freed at once rather than by the garbage collector.

The cap and the message limit are the node's :class:`~.limits.NodeLimits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

#: longest wait of a call for room under max_inflight_bytes (or its deadline, if earlier)
ADMIT_WAIT_S = 5.0
#: a call being read reserves this many message limits (the transport's buffer and the copy Python makes
#: of it); a call being handled this many times its request's size (the message and the decoded tensor)
READ_COPIES = 2
#: longest a call may take to deliver its request once it has room (its reservation is held meanwhile)
READ_TIMEOUT_S = 10.0

_CHAIN = "distree.node.v1.ChainNode"
_INFERENCE = "inference.GRPCInferenceService"


class InflightBytes:
    """The bytes of requests a node is handling, against a cap; callers over the cap queue (first come,
    first served) until there is room or their wait ends. Used on the node's event loop."""

    def __init__(self, cap: int, *, node: str = "", registry: CollectorRegistry | None = None) -> None:
        self.cap = cap
        self.inflight = 0
        self.peak = 0
        self.seen = 0  # bytes of every request read (what the allocator has seen)
        self.last_change = time.monotonic()
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()
        self._gauge = None
        if registry is not None:
            from prometheus_client import Gauge

            self._gauge = Gauge(
                "distree_inflight_bytes",
                "Bytes reserved for requests this node reads or handles",
                ["node"],
                registry=registry,
            ).labels(node=node)

    def _add(self, n: int) -> None:
        self.inflight += n
        self.peak = max(self.peak, self.inflight)
        self.last_change = time.monotonic()
        if self._gauge is not None:
            self._gauge.set(self.inflight)

    def try_acquire(self, n: int) -> bool:
        """Count ``n`` more bytes in flight if they fit now and nobody waits before them."""
        if self._waiters or self.inflight + n > self.cap:
            return False
        self._add(n)
        return True

    async def acquire(self, n: int, wait_s: float) -> bool:
        """Count ``n`` more bytes in flight, waiting up to ``wait_s`` for room (False: no room in time)."""
        if self.try_acquire(n):
            return True
        if wait_s <= 0 or n > self.cap:
            return False
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, but the caller is gone
                self.release(n)
            raise
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._grant()  # those behind a waiter that gave up may fit now
        return not fut.cancelled()

    def release(self, n: int) -> None:
        self._add(-n)
        self._grant()

    def _grant(self) -> None:
        w = self._waiters
        while w and self.inflight + w[0][0] <= self.cap:
            m, fut = w.popleft()
            if not fut.done():
                self._add(m)
                fut.set_result(None)


class Admission(grpc.aio.ServerInterceptor):
    """Bounds the memory a node holds for requests: each unary call of the chain and inference services
    first reserves :data:`READ_COPIES` message limits (what the transport and Python hold while the
    request is read), reads the request (as a stream of one message, so nothing is read before there is
    room), and keeps :data:`READ_COPIES` times its size reserved until the answer leaves. Calls wait up to
    :data:`ADMIT_WAIT_S` (or their deadline) for room, then get ``RESOURCE_EXHAUSTED``. Requests that
    are not valid messages get ``INVALID_ARGUMENT``. Place it after the access control: callers that
    are not admitted are refused for that first, before anything is read."""

    def __init__(
        self,
        limiter: InflightBytes,
        k: int,
        message_bytes: int,
        on_refusal: Callable[[str, str], None] | None = None,
        wait_s: float | None = None,
    ) -> None:
        self.limiter = limiter
        self.k = k
        self.message_bytes = message_bytes
        # what a call reserves while it is read: the transport holds its message, then Python copies it
        self.reserve = min(READ_COPIES * message_bytes, limiter.cap)
        self.on_refusal = on_refusal
        self.wait_s = ADMIT_WAIT_S if wait_s is None else wait_s
        self.read_timeout_s = READ_TIMEOUT_S
        self.refusals = 0

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        service = details.method.lstrip("/").partition("/")[0]
        if handler is None or handler.unary_unary is None or service not in (_CHAIN, _INFERENCE):
            return handler
        inner, parse = handler.unary_unary, handler.request_deserializer or (lambda b: b)
        limiter, reserve = self.limiter, self.reserve

        async def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            # read as a stream of one message, so that nothing is read before there is room for it
            left = context.time_remaining()
            wait = self.wait_s if left is None else min(self.wait_s, max(left - 0.05, 0.0))
            if not await limiter.acquire(reserve, wait):
                await self._refuse(context)
            held = reserve
            try:
                try:  # a caller that trickles its request in must not hold the room for long
                    async with asyncio.timeout(self.read_timeout_s):
                        raw = await context.read()
                except TimeoutError:
                    raw = None
                if raw is None:
                    await self._slow(context)
                if raw is grpc.aio.EOF:
                    await self._malformed(context, "the call carries no request message")
                n = len(raw)
                limiter.seen += n
                keep = min(READ_COPIES * n, held)  # its message and the tensor decoded from it
                limiter.release(held - keep)
                held = keep
                try:
                    msg, why = parse(raw), ""
                except Exception as e:  # noqa: BLE001 - DecodeError and friends: the caller's bytes are not a message
                    msg, why = None, f"the request is not a valid protobuf message ({e})"
                raw = None
                if msg is None:
                    await self._malformed(context, why)
                try:
                    return await inner(msg, context)
                except BaseException as e:
                    msg = None
                    release_frames(e)
                    raise
            finally:
                limiter.release(held)

        return grpc.stream_unary_rpc_method_handler(
            behaviour, request_deserializer=None, response_serializer=handler.response_serializer
        )

    def _count(self, code: str, reason: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(code, reason)

    async def _malformed(self, context: grpc.aio.ServicerContext, why: str) -> None:
        reason = f"{why}; send it with the service's own stubs"
        self._count("INVALID_ARGUMENT", reason)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)

    async def _slow(self, context: grpc.aio.ServicerContext) -> None:
        reason = (
            f"the request did not arrive within {self.read_timeout_s:g} s of node {self.k} starting to read it; "
            "send the whole request at once (or over a faster link)"
        )
        self._count("RESOURCE_EXHAUSTED", reason)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        lim = self.limiter
        reason = (
            f"node {self.k} holds {_mb(lim.inflight)} for the requests it is handling, at its max_inflight_bytes "
            f"of {_mb(lim.cap)} (a request counts twice its size, and {_mb(self.reserve)} while it is read); "
            "retry after a backoff, or raise max_inflight_bytes"
        )
        self.refusals += 1
        n = self.refusals
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, ... refusal
            log.warning(
                "refused a call: %d bytes in flight, cap %d (%d refusals so far)",
                lim.inflight,
                lim.cap,
                n,
                extra={"event": "refused", "code": "RESOURCE_EXHAUSTED", "count": n},
            )
        self._count("RESOURCE_EXHAUSTED", reason)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)


def release_frames(e: BaseException) -> None:
    """Drop the local variables of the finished frames an exception (and its context) went through.

    An aborted gRPC call keeps its abort exception in the call's state, which the servicer context in
    those frames references: a reference cycle that keeps every request and tensor the handler held
    alive until the garbage collector runs (with few Python objects per request, that can be minutes)."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen and len(seen) < 16:
        seen.add(id(x))
        traceback.clear_frames(x.__traceback__)
        x = x.__context__ or x.__cause__


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
