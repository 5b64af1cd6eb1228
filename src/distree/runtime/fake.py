"""An in-process successor for tests of a node: no sockets, no processes, and deterministic time.

:class:`FakeSuccessor` is a :class:`~distree.runtime.hop.Transport` that answers each ``Forward``
from a callback (like a mock HTTP transport), and can fail with a chosen gRPC status, be slow by a
chosen amount (against the link's clock: with a :class:`~distree.runtime.clock.ManualClock` the time
passes at once), or go down (``UNAVAILABLE`` and failing health checks until it is back up).
:class:`FakeLink` is the real :class:`~distree.runtime.link.ChainLink` over one, so deadline
arithmetic, estimates, degradation reasons and reconnection are the production code::

    link = FakeLink(lambda req: answer_all(req, exit_node=3), clock=clock)
    core = NodeCore(spec, 2, link=link, clock=clock)
    link.successor.fail = grpc.StatusCode.INTERNAL   # next forwards fail: rows answered degraded
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from .clock import SYSTEM_CLOCK, Clock
from .hop import Hop
from .link import ChainLink
from .metrics import NodeMetrics
from .protos import node_pb2
from .transport import rpc_error

Handler = Callable[[node_pb2.ForwardRequest], node_pb2.ForwardResponse | Awaitable[node_pb2.ForwardResponse]]


def features(req: node_pb2.ForwardRequest) -> np.ndarray:
    """The features of a ``Forward`` request as an array."""
    t = req.features
    return np.frombuffer(t.data, dtype=t.dtype).reshape(tuple(t.shape))


def answer_all(
    req: node_pb2.ForwardRequest,
    *,
    exit_node: int | None = None,
    probs: list[float] | None = None,
    compute_s: float = 0.0,
    queue_s: float = 0.0,
    downstream_s: float = 0.0,
) -> node_pb2.ForwardResponse:
    """A response answering every row of ``req`` (at node ``from_node + 1`` unless ``exit_node``)."""
    node = req.from_node + 1 if exit_node is None else exit_node
    answers = [node_pb2.Answer(request_id=i, exit_node=node, probs=probs or [], score=1.0) for i in req.request_ids]
    return node_pb2.ForwardResponse(
        answers=answers,
        compute_s=compute_s,
        queue_s=queue_s,
        downstream_s=downstream_s,
        est_compute_s=compute_s,
        server_s=queue_s + compute_s + downstream_s,
    )


class FakeSuccessor:
    """An in-process node K+1. ``calls`` records every forward as (its ``ForwardRequest``, timeout)."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        address: str = "fake-successor",
        info: node_pb2.InfoResponse | None = None,
    ) -> None:
        self.handler: Handler = handler or answer_all
        self.clock = clock
        self.address = address
        self.info_response = info if info is not None else node_pb2.InfoResponse()
        self.delay_s = 0.0  # each call takes this long (longer than its timeout: DEADLINE_EXCEEDED)
        self.fail: grpc.StatusCode | None = None  # each call ends with this status
        self.down = False  # calls fail UNAVAILABLE and health checks fail
        self.calls: list[tuple[node_pb2.ForwardRequest, float]] = []
        self.closed = False

    async def forward(self, hop: Hop, timeout: float) -> node_pb2.ForwardResponse:
        req = hop.request()
        self.calls.append((req, timeout))
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"{self.address} is down")
        if self.delay_s > timeout:
            await self.clock.sleep(timeout)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if self.delay_s > 0:
            await self.clock.sleep(self.delay_s)
        if self.fail is not None:
            raise rpc_error(self.fail, f"{self.address} failed the call")
        resp: Any = self.handler(req)
        if inspect.isawaitable(resp):
            resp = await resp
        return resp

    async def info(self, timeout: float) -> node_pb2.InfoResponse:
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"{self.address} is down")
        return self.info_response

    async def healthy(self, timeout: float) -> bool:
        await asyncio.sleep(0)
        return not self.down

    async def close(self) -> None:
        self.closed = True


class FakeLink(ChainLink):
    """A :class:`ChainLink` to a :class:`FakeSuccessor` (``link.successor``), probing every millisecond."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        from_node: int = 1,
        margin_s: float = 0.005,
        timeout_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        info: node_pb2.InfoResponse | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.successor = FakeSuccessor(handler, clock=clock, info=info)
        super().__init__(
            self.successor,
            from_node=from_node,
            margin_s=margin_s,
            timeout_s=timeout_s,
            metrics=metrics,
            clock=clock,
            backoff_s=(0.001, 0.001),
        )
