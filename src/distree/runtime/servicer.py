"""The node-to-node gRPC service ``distree.node.v1.ChainNode`` (``Forward``, ``Info``) over a node core.

``Forward`` validates a request from node K-1 (features, ids, deadlines, policy state), turns its
per-row absolute deadlines and the call's own gRPC deadline into this node's monotonic deadlines,
submits the rows to the core and returns every row's answer with the core's timings and estimates.
Malformed requests are rejected with ``INVALID_ARGUMENT`` and a message naming the problem. The
Open Inference Protocol on node 1 is :mod:`distree.runtime.kserve`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
import numpy as np

from ..policies import decode_state
from .core import NodeCore
from .limits import max_forward_rows
from .protos import node_pb2, node_pb2_grpc
from .tensors import BadTensor, check_finite, from_proto


def arrival_deadlines(
    deadline_unix_s: Sequence[float], time_remaining: float | None, *, rows: int, now: float, wall: float
) -> list[float]:
    """Monotonic deadlines (``now``'s clock) of ``rows`` rows that arrived with wall-clock deadlines
    (0 = none; empty = none for every row) on a call with ``time_remaining`` seconds (None = no gRPC
    deadline); the earlier of the two wins, ``inf`` where there is neither. A skewed wall clock only
    ever makes a deadline earlier than the call's own. (Python floats: see ``successor_deadlines``.)"""
    cap = math.inf if time_remaining is None else now + time_remaining
    if not len(deadline_unix_s):
        return [cap] * rows
    return [min(now + (a - wall), cap) if a > 0 else cap for a in deadline_unix_s]


class ChainNodeServicer(node_pb2_grpc.ChainNodeServicer):
    def __init__(self, core: NodeCore) -> None:
        self.core = core

    def parse(self, request: node_pb2.ForwardRequest) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
        """Validate a ``Forward`` request; returns (ids, features, policy state). Raises BadTensor/ValueError."""
        core = self.core
        if core.k == 1:
            raise BadTensor("node 1 takes requests over the Open Inference Protocol (ModelInfer), not Forward")
        x = from_proto(request.features, dtype="float32", row_shape=core.in_shape, max_rows=max_forward_rows(core.spec))
        b = x.shape[0]
        ids = list(request.request_ids)
        if len(ids) != b or len(set(ids)) != b:
            raise BadTensor(f"need {b} distinct request_ids (one per row), got {len(ids)}")
        if len(request.deadline_unix_s) not in (0, b):
            raise BadTensor(f"need 0 or {b} deadlines (one per row), got {len(request.deadline_unix_s)}")
        if any(d != d for d in request.deadline_unix_s):
            raise BadTensor("deadline_unix_s holds NaN; send seconds since the epoch, or 0 for no deadline")
        state = decode_state(request.policy_state) if request.policy_state else {}
        for key, v in state.items():
            if v.shape[:1] != (b,):
                raise BadTensor(f"policy state {key!r} has leading dimension {v.shape[:1]}, expected ({b},)")
        check_finite(x, "features")
        return ids, x, state

    async def Forward(self, request: node_pb2.ForwardRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        core = self.core
        clock = core.clock
        t_in = clock.monotonic()
        try:
            ids, x, state = self.parse(request)
        except (BadTensor, ValueError) as e:
            core.metrics.rejected.labels(node=core.metrics.node, code="INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises
        deadline = arrival_deadlines(
            request.deadline_unix_s, context.time_remaining(), rows=len(ids), now=clock.monotonic(), wall=clock.wall()
        )
        try:
            chunk = await core.submit(ids, x, state, deadline)
        except BadTensor as e:  # found while computing (non-finite output, a state the policy cannot use)
            core.metrics.rejected.labels(node=core.metrics.node, code="INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises
        return node_pb2.ForwardResponse(
            answers=chunk.answers,
            compute_s=chunk.compute_s,
            queue_s=chunk.queue_s,
            downstream_s=chunk.downstream_s,
            est_compute_s=core.est_compute.value,
            est_continue_s=core.est_continue(),
            server_s=clock.monotonic() - t_in,
        )

    async def Info(self, request: node_pb2.InfoRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        return self.core.info()
