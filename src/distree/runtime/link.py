"""The link from node K to node K+1: forwarding rows, the hop's deadline arithmetic, the estimates of
the hop and of the successor, its up/down state with reconnection, and why a forward failed.

:class:`ChainLink` holds that logic over a :class:`Transport`, the thing that actually carries a call:
:class:`GrpcTransport` (a persistent grpc.aio channel) in a node process, or an in-process fake
(:class:`~distree.runtime.fake.FakeSuccessor`) in tests. A node core sees only the :class:`Link`
protocol.

Deadlines. A row forwarded with deadline ``d`` (the time by which this node must answer its caller)
gets ``d - back_s()`` as the successor's deadline, where ``back_s`` is the answer's way back: half
the link's measured round-trip transport time (EWMA) plus the return margin. The call's gRPC timeout
is the latest of those (capped by ``timeout_s``, the cap for rows without a deadline), so this node
keeps time to answer the rows itself when the successor is late. A forward that has no time left,
or whose call fails, returns a reason and no answers; the core then answers those rows itself,
degraded.

Hung successors. Besides that deadline, a forward waits at most the *hop timeout*, which follows the
successor's measured round trips: ``hop_timeout_factor`` x the p99 of the last 256 answered forwards
(not counting a stream's first, which holds its set-up; scaled up for a batch larger than usual)
+ ``hop_timeout_margin_ms`` per hop still ahead, capped by the deadline. A forward that runs past it
is answered here as ``successor-timeout`` and the successor is marked *suspect*: probed like a dead
one (rows meanwhile answered here, degraded ``successor-timeout``) and used again once it answers a
health check. Until 16 round trips are known (and with ``hop_timeout_factor = 0``) only the deadline
applies.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import numpy as np

from ..policies import encode_state
from .balancing import balanced_options
from .clock import SYSTEM_CLOCK, Clock
from .estimates import Ewma, Samples
from .metrics import NodeMetrics
from .protos import node_pb2, node_pb2_grpc
from .tensors import to_proto
from .tls import ClientTLS

if TYPE_CHECKING:
    from .spec import ClusterSpec

log = logging.getLogger(__name__)

#: why a row was answered earlier than the policy wanted
REASONS = ("deadline", "successor-unavailable", "successor-timeout", "successor-error")


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


def successor_deadlines(
    deadline: list[float], *, now: float, wall: float, back_s: float, max_timeout_s: float
) -> tuple[float, list[float]]:
    """The call's timeout and each row's deadline for the successor (wall-clock seconds, 0 = none).

    ``deadline`` holds monotonic seconds (``now`` is the same clock, ``wall`` the wall clock at that
    moment) by which this node must answer each row, ``inf`` for none. The timeout is the latest
    successor deadline minus ``now``, capped at ``max_timeout_s``; uncapped when a row has no
    deadline. A timeout <= 0 means there is no time for the hop.

    Python floats, not numpy: for the few rows of a forward, numpy's per-call overhead is 5-10x the
    arithmetic (measured 64 vs 5 us for one row on the loaded 2-CPU development machine).
    """
    latest = max(deadline)
    timeout = max_timeout_s if latest == math.inf else min(max_timeout_s, latest - back_s - now)
    to_wall = wall - now - back_s
    return timeout, [d + to_wall if d != math.inf else 0.0 for d in deadline]


def failure_reason(code: grpc.StatusCode) -> str:
    """The degradation reason of rows whose forward failed with ``code``."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "successor-timeout"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "successor-unavailable"
    return "successor-error"


@dataclass(slots=True)
class Forwarded:
    """The outcome of a forward: answers by request id, or why rows must be answered here."""

    answers: dict[str, node_pb2.Answer]
    reason: str  # "" when the successor answered; rows it left out count as "successor-error"
    rtt_s: float  # seconds from sending to the answer (or the failure)


@dataclass
class LinkEstimates:
    """EWMA estimates of the hop (transport round trip) and of the successor (queue + compute)."""

    hop: Ewma = field(default_factory=lambda: Ewma(0.2, default=0.001))
    next: Ewma = field(default_factory=lambda: Ewma(0.2))
    hop_samples: Samples = field(default_factory=Samples)  # round trip minus the callee's compute + downstream
    wire_samples: Samples = field(default_factory=Samples)  # round trip minus the callee's whole handler time

    def update(self, rtt: float, resp: node_pb2.ForwardResponse) -> float:
        """Take in one answered forward; returns its hop time (transport incl. the callee's queue)."""
        hop = rtt - resp.compute_s - resp.downstream_s
        self.hop_samples.add(hop)
        self.wire_samples.add(rtt - resp.server_s)
        self.hop.update(max(hop - resp.queue_s, 0.0))
        self.next.update(resp.queue_s + resp.compute_s)
        return hop

    def continue_s(self) -> float:
        """Estimated seconds from now to the successor's answer for a row forwarded now."""
        return self.hop.value + self.next.value


#: Estimates older than this (no answered forward since) are refreshed from the successor's Info before
#: the deadline rule uses them: a node whose rule stops forwarding would otherwise keep a stale, high
#: estimate (a cold first call, a slow spell of the successor) and never forward again.
REFRESH_S = 0.5


@dataclass(slots=True)
class Hop:
    """The rows of one forward as the transport carries them."""

    ids: list[str]
    h: np.ndarray  # features (B, ...)
    state: bytes  # distree.policies.encode_state of the rows (b"" = none)
    deadline_unix_s: list[float]  # per row, wall clock (0 = none)
    timeout_s: float  # the hop's deadline as seconds from now (a unary call's gRPC timeout)
    deadline_s: float  # the same, wall clock
    from_node: int

    def request(self) -> node_pb2.ForwardRequest:
        """The rows as a unary ``Forward`` request."""
        return node_pb2.ForwardRequest(
            request_ids=self.ids,
            features=to_proto(self.h),
            policy_state=self.state,
            deadline_unix_s=self.deadline_unix_s,
            from_node=self.from_node,
        )


class Transport(Protocol):
    """What carries calls to the successor. Failures raise ``grpc.aio.AioRpcError``.

    ``forward`` waits at most ``timeout`` seconds (``<= hop.timeout_s``, the hop's deadline that the
    successor is told) and then fails with DEADLINE_EXCEEDED. Its answer has ``answers`` (with
    ``request_id``) and the callee's timings as in ``ForwardResponse``.
    """

    address: str

    async def forward(self, hop: Hop, timeout: float) -> Any: ...
    async def info(self, timeout: float) -> node_pb2.InfoResponse: ...
    async def healthy(self, timeout: float) -> bool: ...
    async def close(self) -> None: ...


class Link(Protocol):
    """The link to the successor as a node core uses it."""

    address: str
    up: bool
    down_reason: str  # the degradation reason of rows answered here while it is down
    estimates: LinkEstimates
    forwards: int  # Forward calls made

    def back_s(self) -> float: ...
    def continue_s(self) -> float: ...
    def refresh_if_stale(self) -> None: ...
    async def start(self) -> None: ...
    async def forward(
        self, ids: list[str], h: np.ndarray, state: dict[str, np.ndarray], deadline: list[float]
    ) -> Forwarded: ...
    async def close(self) -> None: ...


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


#: answered round trips the hop timeout needs before it applies, and how many it looks back on
HOP_TIMEOUT_MIN_SAMPLES = 16
HOP_TIMEOUT_WINDOW = 256


class ChainLink:
    """Forwarding over a transport, with deadlines, estimates, up/down state and reconnection."""

    def __init__(
        self,
        transport: Transport,
        *,
        from_node: int,
        margin_s: float = 0.005,
        timeout_s: float = 30.0,
        metrics: NodeMetrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
        backoff_s: tuple[float, float] = (0.05, 1.0),
        hop_timeout_factor: float = 4.0,
        hop_timeout_margin_s: float = 0.2,
        hops_ahead: int = 1,
    ) -> None:
        self.transport = transport
        self.address = transport.address
        self.from_node = from_node
        self.margin_s = margin_s  # kept for the answer's way back on top of half the round trip
        self.timeout_s = timeout_s  # cap on a forward's timeout
        self.metrics = metrics if metrics is not None else NodeMetrics(from_node)
        self.clock = clock
        self.backoff_s = backoff_s  # reconnection probe: first and longest wait between health checks
        self.hop_timeout_factor = hop_timeout_factor  # 0: no hop timeout (only deadlines)
        self.hop_timeout_pad_s = hop_timeout_margin_s * max(1, hops_ahead)  # margin per hop still ahead
        self.estimates = LinkEstimates()
        self.up = True  # optimistic: the first failure marks it down
        self.down_reason = "successor-unavailable"  # how rows are degraded while it is down
        self.forwards = 0
        self.rtts: deque[float] = deque(maxlen=HOP_TIMEOUT_WINDOW)  # answered round trips (s)
        self.rows = Ewma(0.1, default=1.0)  # rows per forward
        self._p99 = math.inf
        self._probe: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._estimated_at = clock.monotonic()  # when the estimates last took in a measurement
        self._refreshing = False
        self.metrics.successor_up.set(1)

    @classmethod
    def to_successor(
        cls, spec: ClusterSpec, k: int, *, metrics: NodeMetrics, clock: Clock = SYSTEM_CLOCK, replica: int = 1
    ) -> ChainLink:
        """The link from node ``k`` (its replica ``replica``) to node ``k + 1``: one raw stream per replica."""
        from .auth import chain_token
        from .streams import StreamTransport
        from .tls import node_client_tls

        tls = node_client_tls(spec, spec.node(k, replica))
        transport = StreamTransport(spec.addresses(k + 1), tls, spec.max_message_bytes, token=chain_token(spec))
        return cls(
            transport,
            from_node=k,
            margin_s=spec.return_margin_ms / 1000.0,
            timeout_s=spec.forward_timeout_s,
            metrics=metrics,
            clock=clock,
            hop_timeout_factor=spec.hop_timeout_factor,
            hop_timeout_margin_s=spec.hop_timeout_margin_ms / 1000.0,
            hops_ahead=spec.num_nodes - k,
        )

    def back_s(self) -> float:
        """Time an answer from the successor needs to get here and be passed on."""
        return self.margin_s + 0.5 * self.estimates.hop.value

    def continue_s(self) -> float:
        """The estimates' time to the successor's answer plus the wait behind the bytes already queued on
        the link (its backlog: on a slow link requests queue here before they reach the successor)."""
        backlog = getattr(self.transport, "backlog_s", None)
        return self.estimates.continue_s() + (backlog() if backlog is not None else 0.0)

    def refresh_if_stale(self) -> None:
        """Start one Info call to the successor when the estimates are older than :data:`REFRESH_S`: its
        round trip is a hop sample and its compute + queue estimate a successor sample."""
        now = self.clock.monotonic()
        if self.up and not self._refreshing and now - self._estimated_at >= REFRESH_S:
            self._refreshing = True
            self._spawn(self._refresh())

    async def _refresh(self) -> None:
        t = self.clock.monotonic()
        try:
            info = await self.transport.info(1.0)
        except grpc.aio.AioRpcError:
            return  # a forward will find out whether the successor is down
        finally:
            self._refreshing = False
            self._estimated_at = self.clock.monotonic()
        self.estimates.hop.update(self.clock.monotonic() - t)
        self.estimates.next.update(info.est_compute_s + info.est_queue_s)

    def hop_timeout_s(self, rows: int) -> float:
        """How long a forward of ``rows`` rows may take before the successor counts as hung (inf: no limit)."""
        if self.hop_timeout_factor <= 0 or len(self.rtts) < HOP_TIMEOUT_MIN_SAMPLES:
            return math.inf
        scale = max(1.0, rows / max(self.rows.value, 1.0))
        return self.hop_timeout_factor * self._p99 * scale + self.hop_timeout_pad_s

    def _took(self, rtt: float, rows: int) -> None:
        self.rtts.append(rtt)
        self.rows.update(rows)
        n = len(self.rtts)
        if n >= HOP_TIMEOUT_MIN_SAMPLES and (n < HOP_TIMEOUT_WINDOW or self.forwards % 16 == 0):
            xs = sorted(self.rtts)
            self._p99 = xs[min(n - 1, int(0.99 * n))]

    async def start(self) -> None:
        self._spawn(self._seed())

    async def close(self) -> None:
        for t in [*self._tasks, *([self._probe] if self._probe else [])]:
            t.cancel()
        await self.transport.close()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def forward(
        self, ids: list[str], h: np.ndarray, state: dict[str, np.ndarray], deadline: list[float]
    ) -> Forwarded:
        """Send rows (features ``h``, policy state, per-row monotonic deadlines) to the successor."""
        clock = self.clock
        t = clock.monotonic()
        wall = clock.wall()
        timeout, dl_unix = successor_deadlines(
            deadline, now=t, wall=wall, back_s=self.back_s(), max_timeout_s=self.timeout_s
        )
        if timeout <= 0:
            return Forwarded({}, "deadline", clock.monotonic() - t)
        hop = Hop(ids, h, encode_state(state) if state else b"", dl_unix, timeout, wall + timeout, self.from_node)
        hung_s = self.hop_timeout_s(len(ids))
        wait = min(timeout, hung_s)
        self.forwards += 1
        try:
            try:
                resp = await self.transport.forward(hop, wait)
            except grpc.aio.AioRpcError as e:
                # a channel still backing off from an earlier failed connection (the successor started
                # after this node, or restarted) fails calls at once: if it connects within a moment,
                # send again instead of degrading the answer
                left = wait - (clock.monotonic() - t)
                if failure_reason(e.code()) != "successor-unavailable" or not await self._reachable(min(0.25, left)):
                    raise
                spent = clock.monotonic() - t
                hop.timeout_s = timeout - spent
                resp = await self.transport.forward(hop, wait - spent)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            reason = failure_reason(code)
            if reason == "successor-unavailable":
                self.mark_down(f"{code.name}: {e.details()}")
            elif reason == "successor-timeout" and hung_s < timeout:
                self._hung(hung_s)
            elif reason == "successor-error":
                log.warning(
                    "successor %s failed a forward: %s %s",
                    self.address,
                    code.name,
                    e.details(),
                    extra={"event": "forward_error"},
                )
            return Forwarded({}, reason, clock.monotonic() - t)
        rtt = clock.monotonic() - t
        if not getattr(resp, "first", False):  # a stream's first round trip holds its set-up: not a sample
            self._took(rtt, len(ids))
        self.metrics.hop_s.observe(self.estimates.update(rtt, resp))
        self._estimated_at = clock.monotonic()
        return Forwarded({a.request_id: a for a in resp.answers}, "", rtt)

    def _hung(self, hung_s: float) -> None:
        """A forward ran past the hop timeout: the successor is suspect (unless other replicas serve)."""
        usable = getattr(self.transport, "usable", None)
        if usable is not None and usable():
            return  # the transport set that replica aside; the others take the rows
        self.mark_down(f"no answer within the hop timeout of {hung_s * 1000:.0f} ms", reason="successor-timeout")

    # ------------------------------------------------------------------ up/down
    async def _reachable(self, timeout: float) -> bool:
        """Whether the successor answers a health check within ``timeout`` (waiting for a connection)."""
        if timeout <= 0:
            return False
        try:
            return await self.transport.healthy(timeout)
        except grpc.aio.AioRpcError:
            return False

    async def wait_reachable(self, timeout_s: float) -> bool:
        """Wait until the successor serves (True) or ``timeout_s`` passes (False)."""
        end = self.clock.monotonic() + timeout_s
        while (left := end - self.clock.monotonic()) > 0:
            if await self._reachable(min(1.0, left)):
                return True
            await self.clock.sleep(min(0.05, max(left, 0.0)))
        return False

    def mark_down(self, why: str, reason: str = "successor-unavailable") -> None:
        """Stop sending (the core answers locally, degraded with ``reason``) and probe the successor's
        health until it is back."""
        if self.up:
            log.warning(
                "successor %s is %s (%s); answering locally until it is back",
                self.address,
                "suspect" if reason == "successor-timeout" else "down",
                why,
                extra={"event": "successor_down", "successor": self.address, "reason": reason},
            )
            self.down_reason = reason
        self.up = False
        self.metrics.successor_up.set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff, longest = self.backoff_s
        while not self.up:
            await asyncio.sleep(backoff)
            try:
                if await self.transport.healthy(max(0.5, backoff)):
                    self.up = True
                    self.metrics.successor_up.set(1)
                    log.warning(
                        "successor %s is back", self.address, extra={"event": "successor_up", "successor": self.address}
                    )
                    self._spawn(self._seed())
                    return
            except grpc.aio.AioRpcError:
                pass
            backoff = min(backoff * 2, longest)

    async def _seed(self) -> None:
        """Ask the successor for its compute + queue estimate (it includes its speed profile)."""
        backoff, longest = self.backoff_s
        for _ in range(40):
            try:
                info = await self.transport.info(2.0)
                self.estimates.next.default = info.est_compute_s + info.est_queue_s
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, longest)
