"""The ChainNode servicer over a node core with a fake successor: deadlines on arrival, validation,
the response's timings. No sockets: the servicer is called with a stand-in for the gRPC context."""

from __future__ import annotations

import asyncio
import math

import grpc
import numpy as np
import pytest
from _unit import Unit, rows

from distree.runtime.clock import ManualClock
from distree.runtime.protos import node_pb2
from distree.runtime.servicer import ChainNodeServicer, arrival_deadlines
from distree.runtime.tensors import to_proto

NOW, WALL = 100.0, 1.7e9


class Aborted(Exception):
    pass


class Context:
    """What the servicer uses of ``grpc.aio.ServicerContext``."""

    def __init__(self, time_remaining: float | None = None) -> None:
        self.remaining = time_remaining
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def test_arrival_deadlines():
    d = arrival_deadlines([WALL + 0.5, 0.0, WALL - 1.0], None, rows=3, now=NOW, wall=WALL)
    np.testing.assert_allclose(d, [NOW + 0.5, np.inf, NOW - 1.0])
    d = arrival_deadlines([WALL + 0.5, 0.0], 0.2, rows=2, now=NOW, wall=WALL)  # the call's deadline is earlier
    np.testing.assert_allclose(d, [NOW + 0.2, NOW + 0.2])
    assert arrival_deadlines([], None, rows=2, now=NOW, wall=WALL) == [math.inf, math.inf]
    assert arrival_deadlines([], 0.3, rows=2, now=NOW, wall=WALL) == [NOW + 0.3, NOW + 0.3]


def _request(x: np.ndarray, ids: list[str], deadlines: list[float]) -> node_pb2.ForwardRequest:
    return node_pb2.ForwardRequest(request_ids=ids, features=to_proto(x), deadline_unix_s=deadlines, from_node=1)


def test_forward_turns_wall_clock_deadlines_into_the_successors(unit: Unit):
    clock = ManualClock(start=NOW, wall_offset=WALL - NOW)
    core = unit.core(2, clock=clock)
    servicer = ChainNodeServicer(core)
    x = rows(unit.in_shape(2), [0, 0, 1], [1, 2, 3])
    req = _request(x, ["u0", "u1", "u2"], [WALL + 0.5, 0.0, WALL + 0.5])
    resp = asyncio.run(servicer.Forward(req, Context(time_remaining=None)))
    assert [(a.request_id, a.exit_node) for a in resp.answers] == [("u0", 3), ("u1", 3), ("u2", 2)]
    fwd, timeout = core.link.successor.calls[0]
    back = 0.005 + 0.5 * 0.001
    assert list(fwd.deadline_unix_s) == [pytest.approx(WALL + 0.5 - back), 0.0]
    assert timeout == core.spec.forward_timeout_s  # u1 has no deadline
    assert resp.est_compute_s == core.est_compute.value and resp.est_continue_s == core.est_continue()
    # with the call's own deadline (0.2 s) every row has one, and the timeout follows it
    req = _request(x[:1], ["v0"], [])
    back = core.link.back_s()  # the first forward measured the hop: 0 s on this clock, so only the margin is left
    assert back == pytest.approx(0.005)  # the first sample replaces the prior
    asyncio.run(servicer.Forward(req, Context(time_remaining=0.2)))
    fwd, timeout = core.link.successor.calls[1]
    assert timeout == pytest.approx(0.2 - back) and fwd.deadline_unix_s[0] == pytest.approx(WALL + 0.2 - back)


@pytest.mark.parametrize(
    "k,make,message",
    [
        (1, lambda x: _request(x, ["a"], []), "Open Inference Protocol"),
        (2, lambda x: _request(np.concatenate([x, x]), ["a", "a"], []), "distinct request_ids"),
        (2, lambda x: _request(x, ["a"], [1.0, 2.0]), "deadlines"),
        (2, lambda x: _request(x * np.nan, ["a"], []), "NaN"),
        (2, lambda x: _request(x[:, :1], ["a"], []), "shape"),
    ],
)
def test_malformed_forward_is_rejected_with_invalid_argument(unit: Unit, k, make, message):
    core = unit.core(k)
    ctx = Context()
    x = rows(unit.in_shape(2), [0], [1])
    with pytest.raises(Aborted):
        asyncio.run(ChainNodeServicer(core).Forward(make(x), ctx))
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and message in ctx.details
    assert core.link.successor.calls == []
    rejected = core.metrics.registry.get_sample_value(
        "distree_rejected_total", {"node": str(k), "code": "INVALID_ARGUMENT"}
    )
    assert rejected == 1
