"""What a node's link to its successor and the transports under it share: the rows of one hop, their
deadline arithmetic, the outcome of a forward and why it failed, the estimates of the hop and of the
successor, and the protocols.

:class:`Hop` is what a :class:`Transport` carries (the rows of one forward, their state and deadlines,
from :func:`successor_deadlines`); :class:`Forwarded` is what the link hands back to the node core,
with one of :data:`REASONS` when rows must be answered here (:func:`failure_reason` of a failed call);
:class:`LinkEstimates` are the EWMAs and samples the deadline rule and ``Info`` read. The
:class:`Link` protocol is how a node core sees its link (:class:`~distree.runtime.link.ChainLink`);
the :class:`Transport` protocol is what a link sends through
(:class:`~distree.runtime.streams.StreamTransport` in a node process,
:class:`~distree.runtime.transport.GrpcTransport` for tools and tests,
:class:`~distree.runtime.fake.FakeSuccessor` in process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np

from .estimates import Ewma, Samples
from .protos import node_pb2
from .tensors import to_proto

#: why a row was answered earlier than the policy wanted
REASONS = ("deadline", "successor-unavailable", "successor-timeout", "successor-error")


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
