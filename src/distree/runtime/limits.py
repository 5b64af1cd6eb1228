"""Resource limits of a node: how large a message may be, how many calls, streams and connections it
serves at once, how many request bytes it holds at a time, and giving memory back after a burst.

- **Message limit** (``max_message_bytes``): without the key, derived from the model: the largest
  request the node can legitimately get (node 1: ``max_request_batch`` rows of FP32 input; node K:
  the rows of one batch of node K-1, ``max_request_batch + max_batch_size - 1``, of its input
  features, with ids, deadlines and policy state) or the largest answer it sends, whichever is
  larger, with :data:`HEADROOM` and :data:`FIXED_BYTES` on top; at least :data:`MIN_MESSAGE_BYTES`
  and at most the spec's ``max_message_bytes`` default (64 MiB). gRPC refuses larger messages with
  ``RESOURCE_EXHAUSTED`` before they are parsed.
- **Calls and streams**: ``max_concurrent_rpcs`` calls per node (gRPC answers further ones
  ``RESOURCE_EXHAUSTED`` before reading them), ``max_concurrent_streams`` per HTTP/2 connection
  (further streams are refused, ``REFUSED_STREAM``: callers see ``UNAVAILABLE``, which the cluster's
  channels retry). There is no cap on connections: gRPC's ``grpc.max_allowed_incoming_connections``
  had no effect in the grpcio build tested (1.85).
- **Bytes in flight** (``max_inflight_bytes``, default :data:`INFLIGHT_MESSAGES` message limits): the
  memory a node holds for the unary calls of ``ChainNode`` and the inference service (:class:`Admission`):
  a call reserves two message limits while its request is read and twice the request's size (its
  message and the tensor decoded from it) until its answer leaves. A call that finds no room waits
  (first come, first served) up to :data:`ADMIT_WAIT_S` or its deadline, unread, then gets
  ``RESOURCE_EXHAUSTED`` (counted in ``distree_rejected_total{code="RESOURCE_EXHAUSTED"}``); so does a
  call whose request takes longer than :data:`READ_TIMEOUT_S` to arrive once it is being read.
  The transport reads at most :data:`READ_AHEAD_BYTES` ahead for a waiting call (no bandwidth-delay
  probing, fixed stream windows).
  Frames that an aborted call went through are cleared (:func:`release_frames`), so a refused
  request's memory is freed at once rather than by the garbage collector.
- **Memory back to the OS**: large buffers are mapped and unmapped on their own
  (:func:`configure_allocator`), and once the node has been idle for a moment after a burst it
  calls glibc's ``malloc_trim`` (:class:`MemoryReturner`); both are no-ops without glibc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import platform
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ..errors import SpecError
from .spec import DEFAULT_MAX_MESSAGE, ClusterSpec

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

#: the derived message limit: the largest legitimate message times this, plus FIXED_BYTES
HEADROOM = 1.25
FIXED_BYTES = 64 << 10
MIN_MESSAGE_BYTES = 1 << 20
#: bytes per row besides the tensor on ``Forward`` (request id, deadline, policy state, answer fields)
ROW_OVERHEAD_BYTES = 256
#: default ``max_inflight_bytes``: this many message limits
INFLIGHT_MESSAGES = 4
#: allocations of at least this many bytes get their own mapping (returned to the OS when freed)
MMAP_THRESHOLD_BYTES = 4 << 20
#: memory is trimmed once the node was idle this long after at least TRIM_AFTER_BYTES of requests
TRIM_IDLE_S = 1.0
TRIM_AFTER_BYTES = 8 << 20
#: longest wait of a call for room under max_inflight_bytes (or its deadline, if earlier)
ADMIT_WAIT_S = 5.0
#: a call being read reserves this many message limits (the transport's buffer and the copy Python makes
#: of it); a call being handled this many times its request's size (the message and the decoded tensor)
READ_COPIES = 2
#: longest a call may take to deliver its request once it has room (its reservation is held meanwhile)
READ_TIMEOUT_S = 10.0
#: what the transport reads of a request before the node reads it (the HTTP/2 stream window)
READ_AHEAD_BYTES = 256 << 10

_CHAIN = "distree.node.v1.ChainNode"
_INFERENCE = "inference.GRPCInferenceService"


def max_forward_rows(spec: ClusterSpec) -> int:
    """Most rows one ``Forward`` may carry: one batch of the previous node (whole chunks up to
    ``max_batch_size`` rows, the last chunk at most ``max_request_batch`` rows)."""
    return spec.max_request_batch + spec.batching.max_batch_size - 1


def derived_message_bytes(
    k: int,
    in_shape: tuple[int, ...],
    *,
    rows: int,
    num_classes: int,
    label_bytes: int = 0,
) -> int:
    """The message limit of node ``k`` whose input rows have shape ``in_shape`` (FP32), for calls of at
    most ``rows`` rows and answers over ``num_classes`` classes (labels of up to ``label_bytes``)."""
    tensor = 4 * math.prod(in_shape)
    request = rows * (tensor if k == 1 else tensor + ROW_OVERHEAD_BYTES)
    # answers: node 1 may send Triton's classification strings "score:index:label" of every class
    per_row = num_classes * (4 + (24 + label_bytes if k == 1 else 0)) + ROW_OVERHEAD_BYTES
    largest = max(request, rows * per_row)
    n = int(largest * HEADROOM) + FIXED_BYTES
    return min(max(n, MIN_MESSAGE_BYTES), DEFAULT_MAX_MESSAGE)


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """The limits node ``k`` serves with (see the module doc)."""

    message_bytes: int
    inflight_bytes: int
    concurrent_rpcs: int
    concurrent_streams: int
    derived: bool  # the message limit comes from the model (no max_message_bytes in the spec)

    @classmethod
    def of(
        cls,
        spec: ClusterSpec,
        k: int,
        in_shape: tuple[int, ...],
        *,
        num_classes: int,
        labels: list[str] | None = None,
    ) -> NodeLimits:
        """Node ``k``'s limits from the spec and its model; :class:`SpecError` when the spec's limits
        cannot carry one request row or the largest message."""
        rows = spec.max_request_batch if k == 1 else max_forward_rows(spec)
        label_bytes = max((len(s.encode()) for s in labels or []), default=0)
        need = derived_message_bytes(k, in_shape, rows=rows, num_classes=num_classes, label_bytes=label_bytes)
        explicit = "max_message_bytes" in spec.model_fields_set
        message = spec.max_message_bytes if explicit else need
        if not explicit and spec.max_inflight_bytes is not None and spec.max_inflight_bytes < need:
            message = spec.max_inflight_bytes  # a derived limit never exceeds the cap (an explicit one must not)
            log.warning(
                "node %d: max_inflight_bytes = %d is below the largest request (%d rows: about %d bytes); it is "
                "also the node's message limit, so requests with that many rows will be refused",
                k,
                message,
                rows,
                need,
                extra={"event": "limits", "node": k},
            )
        one_row = 4 * math.prod(in_shape) + ROW_OVERHEAD_BYTES
        if explicit and message < one_row:
            raise SpecError(
                f"max_message_bytes = {message} cannot carry one request row of node {k} (about {one_row} bytes); "
                f"raise it, or leave it out to use the limit derived from the model ({need})"
            )
        if explicit and message < need and need > MIN_MESSAGE_BYTES:
            log.warning(
                "max_message_bytes = %d is below the largest request of node %d (%d rows: about %d bytes); "
                "requests with that many rows will be refused with RESOURCE_EXHAUSTED",
                message,
                k,
                rows,
                need,
                extra={"event": "limits", "node": k},
            )
        inflight = spec.max_inflight_bytes if spec.max_inflight_bytes is not None else INFLIGHT_MESSAGES * message
        if inflight < message:
            raise SpecError(
                f"max_inflight_bytes = {inflight} is below node {k}'s message limit {message}: a request of the "
                f"largest size would always be refused; raise max_inflight_bytes to at least {message} or lower "
                "max_message_bytes"
            )
        return cls(
            message_bytes=message,
            inflight_bytes=inflight,
            concurrent_rpcs=spec.max_concurrent_rpcs,
            concurrent_streams=spec.max_concurrent_streams,
            derived=not explicit,
        )

    def server_options(self) -> list[tuple[str, Any]]:
        """gRPC server options beyond the message limits (which :func:`~.link.channel_options` sets)."""
        return [
            ("grpc.max_concurrent_streams", self.concurrent_streams),
            # without bandwidth-delay probing the transport's windows stay at READ_AHEAD_BYTES per call, so it
            # does not read ahead the requests of calls that wait for room (a call being read opens its window
            # for its whole message: one more round trip for a request larger than that)
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", READ_AHEAD_BYTES),
        ]


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


# ---------------------------------------------------------------------------- the allocator
_M_MMAP_THRESHOLD = -3


def _glibc() -> Any:
    """glibc through ctypes, or None (another C library, another OS)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Any = None
_LIBC_LOADED = False


def libc() -> Any:
    global _LIBC, _LIBC_LOADED
    if not _LIBC_LOADED:
        _LIBC, _LIBC_LOADED = _glibc(), True
    return _LIBC


def configure_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Give allocations of ``mmap_threshold`` bytes and more their own mappings, so a freed request
    buffer goes back to the OS at once (glibc otherwise raises the threshold to the largest buffer freed,
    up to 32 MiB, and keeps such buffers in its heap). False without glibc."""
    c = libc()
    return bool(c is not None and c.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1)


def trim_memory() -> bool:
    """Return the allocator's free memory to the OS (glibc ``malloc_trim(0)``); False without glibc."""
    c = libc()
    return bool(c is not None and c.malloc_trim(0))


class MemoryReturner:
    """Trims the allocator once the node has had no request in flight for ``idle_s`` after at least
    ``after_bytes`` of requests arrived (admitted or refused) since the last trim."""

    def __init__(self, limiter: InflightBytes, *, idle_s: float = TRIM_IDLE_S, after_bytes: int = TRIM_AFTER_BYTES):
        self.limiter = limiter
        self.idle_s = idle_s
        self.after_bytes = after_bytes
        self.trims = 0
        self._mark = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if libc() is not None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def due(self, now: float) -> bool:
        lim = self.limiter
        return lim.inflight == 0 and lim.seen - self._mark >= self.after_bytes and now - lim.last_change >= self.idle_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.idle_s / 2)
            if self.due(time.monotonic()):
                self._mark = self.limiter.seen
                await loop.run_in_executor(None, trim_memory)
                self.trims += 1
                log.debug("returned free memory to the OS after a burst", extra={"event": "malloc_trim"})
