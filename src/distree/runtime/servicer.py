"""The node-to-node gRPC service ``distree.node.v1.ChainNode`` (``ForwardStream``, ``Forward``,
``Info``) over a node core.

``ForwardStream`` is what node K-1 uses: one long-lived bidirectional call per caller, carrying raw
frames (:mod:`~distree.runtime.frames`). Each forward frame is validated (features, ids, deadlines,
policy state), its per-row absolute deadlines and the frame's own deadline become this node's
monotonic deadlines, its rows go to the core, and the reply frame carries every row's answer with the
core's timings and estimates; the forwards of a stream are served concurrently and answered as they
finish. A malformed frame is answered alone with an error frame (``INVALID_ARGUMENT`` and a message
naming the problem); the stream and its other forwards go on. A cancel frame drops the reply.

``Forward`` is the same as a unary protobuf call (kept for tools and tests); malformed requests are
rejected with ``INVALID_ARGUMENT``. The Open Inference Protocol on node 1 is :mod:`distree.runtime.kserve`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import cast

import grpc
import numpy as np

from ..policies import decode_state
from . import frames
from .core import NodeCore
from .limits import max_forward_rows
from .logs import RepeatedErrors
from .protos import node_pb2, node_pb2_grpc
from .tensors import BadTensor, check_finite, from_proto

log = logging.getLogger(__name__)

#: the node stream's method (raw frames both ways: identity serialisers)
STREAM_METHOD = "ForwardStream"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]


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


def info_response(core: NodeCore) -> node_pb2.InfoResponse:
    """What ``Info`` answers: the node's estimates (its predecessor's link seeds and refreshes its own from
    them) and, as JSON, its counts, the summaries of its samples and the latest samples."""
    link = core.link
    est = link.estimates if link is not None else core.no_link
    stats = {
        "backend": core.backend_name,
        "counts": {**core.counts, "forwards": link.forwards if link is not None else 0},
        "degraded": core.degraded_counts,
        "hop_s": est.hop_samples.summary(),
        "wire_s": est.wire_samples.summary(),
        "compute_s": core.compute_samples.summary(),
        "est_continue_s": est.continue_s(),
        # the latest samples themselves (newest last), for medians over a chosen stretch of requests
        "recent": {
            "hop_s": est.hop_samples.last(512),
            "wire_s": est.wire_samples.last(512),
            "compute_s": core.compute_samples.last(512),
        },
    }
    return node_pb2.InfoResponse(
        node=core.k,
        num_nodes=core.spec.num_nodes,
        model=core.model_label,
        policy=core.policy.name,
        est_compute_s=core.compute_now_s(),
        est_queue_s=core.batcher.est_queue.value,
        est_hop_s=est.hop.value,
        est_next_s=est.next.value,
        successor_up=bool(link is None or link.up),
        stats_json=json.dumps(stats),
    )


class ChainNodeServicer(node_pb2_grpc.ChainNodeServicer):
    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self._streams = itertools.count(1)
        self.errors = RepeatedErrors(log, "forward frame failed", event="frame_error")

    def register(self, server: grpc.aio.Server) -> None:
        """Add ``Forward``, ``Info`` and the raw ``ForwardStream`` to ``server``."""
        node_pb2_grpc.add_ChainNodeServicer_to_server(self, server)
        stream: grpc.RpcMethodHandler = grpc.stream_stream_rpc_method_handler(self.ForwardStream)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("distree.node.v1.ChainNode", {STREAM_METHOD: stream}),)
        )

    def _refused(self) -> None:
        core = self.core
        core.metrics.rejected.labels(node=core.metrics.node, code="INVALID_ARGUMENT").inc()

    def parse_frame(self, frame: bytes, tag: str) -> tuple[frames.ForwardFrame, list[str], dict[str, np.ndarray]]:
        """Validate a forward frame; returns it, this node's ids of its rows and the policy state."""
        core = self.core
        if core.k == 1:
            raise BadTensor("node 1 takes requests over the Open Inference Protocol (ModelInfer), not Forward")
        f = frames.decode_forward(frame, dtype="float32", row_shape=core.in_shape, max_rows=core.spec.max_request_batch)
        b = f.x.shape[0]
        state = decode_state(f.state) if f.state else {}
        for key, v in state.items():
            if v.shape[:1] != (b,):
                raise BadTensor(f"policy state {key!r} has leading dimension {v.shape[:1]}, expected ({b},)")
        return f, [f"{tag}.{r}" for r in f.row_ids], state

    async def serve_frame(self, frame: bytes, rid: int, tag: str) -> bytes:
        """The reply (or error) frame of one forward frame."""
        core = self.core
        clock = core.clock
        t_in = clock.monotonic()
        try:
            f, ids, state = self.parse_frame(frame, tag)
            now, wall = clock.monotonic(), clock.wall()
            left = f.deadline_unix_s - wall if f.deadline_unix_s > 0 else None
            deadline = arrival_deadlines(f.row_deadlines, left, rows=len(ids), now=now, wall=wall)
            chunk = await core.submit(ids, f.x, state, deadline)
        except (BadTensor, ValueError) as e:  # malformed, or found while computing (non-finite output, bad state)
            self._refused()
            return frames.encode_error(rid, _INVALID, str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one failed forward must not end the stream
            self.errors.log(e)
            return frames.encode_error(rid, _INTERNAL, f"node {core.k} failed the forward: {e}")
        return frames.encode_reply(
            rid,
            cast("list[node_pb2.Answer]", chunk.answers),  # submit returns the chunk once every row has an answer
            compute_s=chunk.compute_s,
            queue_s=chunk.queue_s,
            downstream_s=chunk.downstream_s,
            est_compute_s=core.est_compute.value,
            est_continue_s=core.est_continue(),
            server_s=clock.monotonic() - t_in,
        )

    async def ForwardStream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        """Serve the forward frames of one caller's stream concurrently; write each reply as it is ready
        (one write at a time). Ends once the caller has half-closed and every forward is answered."""
        tag = f"s{next(self._streams)}"
        serving: dict[int, asyncio.Task] = {}
        cancelled: set[int] = set()
        lock = asyncio.Lock()
        loop = asyncio.get_running_loop()

        async def write(data: bytes) -> None:
            async with lock:
                await context.write(data)

        async def serve(frame: bytes, rid: int) -> None:
            try:
                reply = await self.serve_frame(frame, rid, tag)
                if rid not in cancelled:
                    await write(reply)
            finally:
                serving.pop(rid, None)
                cancelled.discard(rid)

        try:
            while (frame := await context.read()) is not grpc.aio.EOF:
                try:
                    kind, rid = frames.frame_kind(frame)
                    if kind not in (frames.FORWARD, frames.CANCEL):
                        raise frames.BadFrame(f"a caller sends forward or cancel frames, not kind {kind}")
                except frames.BadFrame as e:
                    self._refused()
                    rid = frames.PREFIX.unpack_from(frame)[3] if len(frame) >= frames.PREFIX.size else 0
                    await write(frames.encode_error(rid, _INVALID, str(e)))
                    continue
                if kind == frames.CANCEL:
                    if rid in serving:
                        cancelled.add(rid)
                    continue
                serving[rid] = loop.create_task(serve(frame, rid))
            while serving:  # the caller has half-closed: answer what is in flight, then end
                await asyncio.wait(list(serving.values()))
        finally:
            for t in list(serving.values()):
                t.cancel()

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
            answers=cast("list[node_pb2.Answer]", chunk.answers),  # every row has an answer once submit returns
            compute_s=chunk.compute_s,
            queue_s=chunk.queue_s,
            downstream_s=chunk.downstream_s,
            est_compute_s=core.est_compute.value,
            est_continue_s=core.est_continue(),
            server_s=clock.monotonic() - t_in,
        )

    async def Info(self, request: node_pb2.InfoRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        return info_response(self.core)
