"""The link from node K to node K+1: forwarding rows with the hop's deadlines, the estimates of the hop
and of the successor, its up/down state with reconnection, and why a forward failed.

:class:`ChainLink` holds that logic over a :class:`~distree.runtime.hop.Transport`, the thing that
actually carries a call: :class:`~distree.runtime.streams.StreamTransport` (one long-lived stream per
successor replica) in a node process, :class:`~distree.runtime.transport.GrpcTransport` (unary calls)
for tools, or an in-process fake (:class:`~distree.runtime.fake.FakeSuccessor`) in tests. A node core
sees only the :class:`~distree.runtime.hop.Link` protocol; the rows, outcomes, estimates and deadline
arithmetic the link works with are in :mod:`~distree.runtime.hop`.

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
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from ..policies import encode_state
from .clock import SYSTEM_CLOCK, Clock
from .estimates import Ewma
from .hop import Forwarded, Hop, LinkEstimates, Transport, failure_reason, successor_deadlines
from .metrics import NodeMetrics

if TYPE_CHECKING:
    from .spec import ClusterSpec

log = logging.getLogger(__name__)

#: Estimates older than this (no answered forward since) are refreshed from the successor's Info before
#: the deadline rule uses them: a node whose rule stops forwarding would otherwise keep a stale, high
#: estimate (a cold first call, a slow spell of the successor) and never forward again.
REFRESH_S = 0.5

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
