"""Resource limits of a node, derived from the spec and the model (:class:`NodeLimits`): how large a
message may be, how many calls and streams it serves at once, and how many request bytes it holds
at a time.

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
  memory a node holds for the unary calls of ``ChainNode`` and the inference service, which
  :mod:`.admission` enforces before a request is read. The transport reads at most
  :data:`READ_AHEAD_BYTES` ahead for a waiting call (no bandwidth-delay probing, fixed stream windows).

Giving memory back to the OS after a burst is :mod:`.memory`'s job.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from .spec import DEFAULT_MAX_MESSAGE, ClusterSpec

log = logging.getLogger(__name__)

#: the derived message limit: the largest legitimate message times this, plus FIXED_BYTES
HEADROOM = 1.25
FIXED_BYTES = 64 << 10
MIN_MESSAGE_BYTES = 1 << 20
#: bytes per row besides the tensor on ``Forward`` (request id, deadline, policy state, answer fields)
ROW_OVERHEAD_BYTES = 256
#: default ``max_inflight_bytes``: this many message limits
INFLIGHT_MESSAGES = 4
#: what the transport reads of a request before the node reads it (the HTTP/2 stream window)
READ_AHEAD_BYTES = 256 << 10


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
        """gRPC server options beyond the message limits (which :func:`~.transport.channel_options` sets)."""
        return [
            ("grpc.max_concurrent_streams", self.concurrent_streams),
            # without bandwidth-delay probing the transport's windows stay at READ_AHEAD_BYTES per call, so it
            # does not read ahead the requests of calls that wait for room (a call being read opens its window
            # for its whole message: one more round trip for a request larger than that)
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", READ_AHEAD_BYTES),
        ]
