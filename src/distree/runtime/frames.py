"""Raw frames of the node-to-node stream ``distree.node.v1.ChainNode/ForwardStream``.

The stream carries bytes (identity serialisers, no protobuf): node K writes forward frames to node
K+1 and reads reply frames back, matched by request id, on one long-lived stream per replica. Every
frame starts with the same 12 bytes, little endian::

    magic  2s  b"DH"
    version u8  1
    kind   u8  1 forward | 2 cancel | 3 reply | 4 error
    id     u64 request id (chosen by the caller, unique on its stream)

forward (after the prefix)::

    deadline_unix_s f64   the hop's deadline, wall clock (what a unary call's gRPC deadline was; 0 = none)
    from_node       i32   1-based node number of the caller
    rows            u32   B
    dtype           u8    code of the features' dtype (DTYPES)
    ndim            u8    dimensions of one row
    (2 bytes padding)
    row shape       ndim x u32
    row deadlines   B x f64   wall clock per row (0 = none)
    row ids         B x u64
    state length    u32, then that many bytes: distree.policies.encode_state of the B rows (0 = none)
    features        the rest: exactly B * prod(row shape) * itemsize bytes, row-major

reply::

    rows u32, classes u32 (K), then compute_s, queue_s, downstream_s, est_compute_s, est_continue_s,
    server_s (f64 each, as in ``ForwardResponse``); then per row, in the forward's row order:
    score B x f64, exit node B x u16, reason B x u8 (index into REASON_CODES), then the probabilities
    B x K float32

error: status code u8 (gRPC code number), then a UTF-8 message. cancel: the prefix alone (the caller no
longer waits for that request).

:func:`decode_forward` makes every check of :func:`~distree.runtime.tensors.from_proto` (dtype,
shape, byte count, rows <= the node's batch limit, finite values) and the frame's own (magic,
version, lengths); a frame that fails raises :class:`BadFrame` naming the problem, which the server
answers with an error frame for that request alone.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from .protos import node_pb2
from .tensors import BadTensor, check_features, check_finite

MAGIC = b"DH"
VERSION = 1
FORWARD, CANCEL, REPLY, ERROR = 1, 2, 3, 4

DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int16", "int32", "int64")
_DTYPE_CODE = {name: i for i, name in enumerate(DTYPES)}
#: reason codes of a reply row; 0 = not degraded
REASON_CODES = ("", "deadline", "successor-unavailable", "successor-timeout", "successor-error")
_REASON_CODE = {r: i for i, r in enumerate(REASON_CODES)}

PREFIX = struct.Struct("<2sBBQ")
_FWD = struct.Struct("<2sBBQdiIBB2x")
_REP = struct.Struct("<2sBBQII6d")
_ERR = struct.Struct("<2sBBQB")
_U32 = struct.Struct("<I")


class BadFrame(BadTensor):
    """A frame on the node stream that cannot be used (the message says how)."""


def frame_kind(frame: bytes) -> tuple[int, int]:
    """(kind, request id) of a frame; raises BadFrame for a frame that is not one of this protocol."""
    if len(frame) < PREFIX.size:
        raise BadFrame(f"a frame of {len(frame)} bytes is shorter than the {PREFIX.size}-byte frame prefix")
    magic, version, kind, rid = PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise BadFrame(f"frame magic is {magic!r}, expected {MAGIC!r}: not a distree node frame")
    if version != VERSION:
        raise BadFrame(f"frame version {version} is not supported (this node speaks version {VERSION})")
    if kind not in (FORWARD, CANCEL, REPLY, ERROR):
        raise BadFrame(f"unknown frame kind {kind}")
    return kind, rid


# ---------------------------------------------------------------------------- forward
def encode_forward(
    rid: int,
    *,
    h: np.ndarray,
    row_ids: list[int],
    row_deadlines: list[float],
    deadline_unix_s: float,
    from_node: int,
    state: bytes = b"",
) -> list[bytes | memoryview]:
    """A forward frame as parts to join (the features are not copied until then)."""
    rows = h.shape[0]
    row_shape = h.shape[1:]
    head = _FWD.pack(
        MAGIC, VERSION, FORWARD, rid, deadline_unix_s, from_node, rows, _DTYPE_CODE[h.dtype.name], len(row_shape)
    )
    n = len(row_shape)
    meta = struct.pack(f"<{n}I{rows}d{rows}QI", *row_shape, *row_deadlines, *row_ids, len(state))
    h = np.ascontiguousarray(h)
    return [head, meta, state, h.data.cast("B")]


def forward_frame(rid: int, **kw: object) -> bytes:
    return b"".join(encode_forward(rid, **kw))  # type: ignore[arg-type]


@dataclass(slots=True)
class ForwardFrame:
    rid: int
    deadline_unix_s: float
    from_node: int
    row_ids: list[int]
    row_deadlines: list[float]
    state: bytes
    x: np.ndarray


def decode_forward(frame: bytes, *, dtype: str, row_shape: tuple[int, ...], max_rows: int) -> ForwardFrame:
    """Decode and check a forward frame (the features as one writable copy)."""
    if len(frame) < _FWD.size:
        raise BadFrame(f"a forward frame of {len(frame)} bytes is shorter than its {_FWD.size}-byte header")
    _, _, _, rid, dl, from_node, rows, code, ndim = _FWD.unpack_from(frame)
    if code >= len(DTYPES):
        raise BadFrame(f"features dtype code {code} is unknown (known: {', '.join(DTYPES)})")
    off = _FWD.size
    if ndim > 8:
        raise BadFrame(f"features have {ndim + 1} dimensions, this node expects {len(row_shape) + 1}")
    if len(frame) < off + 4 * ndim:
        raise BadFrame(f"the forward frame ends inside its row shape ({len(frame)} bytes)")
    shape = (rows, *struct.unpack_from(f"<{ndim}I", frame, off))
    off += 4 * ndim
    check_features(DTYPES[code], shape, None, dtype=dtype, row_shape=row_shape, max_rows=max_rows)
    meta = struct.Struct(f"<{rows}d{rows}QI")
    if len(frame) < off + meta.size:
        raise BadFrame(f"the forward frame ends inside its row table ({len(frame)} bytes for {rows} rows)")
    vals = meta.unpack_from(frame, off)
    off += meta.size
    row_deadlines = list(vals[:rows])
    row_ids = list(vals[rows : 2 * rows])
    nstate = vals[-1]
    if len(frame) < off + nstate:
        raise BadFrame(f"the forward frame ends inside its policy state ({nstate} bytes announced)")
    state = bytes(frame[off : off + nstate])
    off += nstate
    check_features(DTYPES[code], shape, len(frame) - off, dtype=dtype, row_shape=row_shape, max_rows=max_rows)
    if len(set(row_ids)) != rows:
        raise BadFrame(f"need {rows} distinct row ids (one per row), got {len(set(row_ids))}")
    if not all(math.isfinite(d) and d >= 0 for d in row_deadlines) or not (math.isfinite(dl) and dl >= 0):
        raise BadFrame("deadlines must be finite wall-clock seconds >= 0 (0 = none)")
    x = np.frombuffer(frame, dtype=dtype, offset=off).reshape(shape).copy()
    check_finite(x, "features")
    return ForwardFrame(rid, dl, from_node, row_ids, row_deadlines, state, x)


def cancel_frame(rid: int) -> bytes:
    return PREFIX.pack(MAGIC, VERSION, CANCEL, rid)


# ---------------------------------------------------------------------------- reply
def encode_reply(
    rid: int,
    answers: list[node_pb2.Answer],
    *,
    compute_s: float = 0.0,
    queue_s: float = 0.0,
    downstream_s: float = 0.0,
    est_compute_s: float = 0.0,
    est_continue_s: float = 0.0,
    server_s: float = 0.0,
) -> bytes:
    """A reply frame answering every row of a forward, in its row order."""
    rows = len(answers)
    k = len(answers[0].probs) if rows else 0
    probs = np.array([a.probs for a in answers], dtype=np.float32).reshape(rows, k).tobytes() if k else b""
    head = _REP.pack(
        MAGIC, VERSION, REPLY, rid, rows, k, compute_s, queue_s, downstream_s, est_compute_s, est_continue_s, server_s
    )
    tail = struct.pack(
        f"<{rows}d{rows}H{rows}B",
        *[a.score for a in answers],
        *[a.exit_node for a in answers],
        *[_REASON_CODE.get(a.reason, len(REASON_CODES) - 1) if a.degraded else 0 for a in answers],
    )
    return b"".join((head, tail, probs))


@dataclass(slots=True)
class Reply:
    """A decoded reply: one answer per row (in the forward's row order) and the callee's timings."""

    answers: list[node_pb2.Answer]
    compute_s: float
    queue_s: float
    downstream_s: float
    est_compute_s: float
    est_continue_s: float
    server_s: float
    first: bool = False  # the first answer on its stream (its round trip holds the stream's set-up)


def decode_reply(frame: bytes, ids: list[str]) -> Reply:
    """Decode a reply to the forward of rows ``ids``; raises BadFrame if it does not answer exactly those."""
    if len(frame) < _REP.size:
        raise BadFrame(f"a reply frame of {len(frame)} bytes is shorter than its {_REP.size}-byte header")
    _, _, _, _, rows, k, *times = _REP.unpack_from(frame)
    if rows != len(ids):
        raise BadFrame(f"the reply answers {rows} rows, the forward had {len(ids)}")
    tail = struct.Struct(f"<{rows}d{rows}H{rows}B")
    if len(frame) != _REP.size + tail.size + 4 * rows * k:
        raise BadFrame(f"a reply of {rows} rows x {k} classes cannot have {len(frame)} bytes")
    vals = tail.unpack_from(frame, _REP.size)
    probs = np.frombuffer(frame, np.float32, rows * k, _REP.size + tail.size).reshape(rows, k).tolist()
    answers = []
    for i in range(rows):
        code = vals[2 * rows + i]
        a = node_pb2.Answer(request_id=ids[i], exit_node=vals[rows + i], probs=probs[i], score=vals[i])
        if code:
            a.degraded, a.reason = True, REASON_CODES[min(code, len(REASON_CODES) - 1)]
        answers.append(a)
    return Reply(answers, *times)


# ---------------------------------------------------------------------------- error
def encode_error(rid: int, code: int, message: str) -> bytes:
    return _ERR.pack(MAGIC, VERSION, ERROR, rid, code) + message.encode()[:4096]


def decode_error(frame: bytes) -> tuple[int, str]:
    """(gRPC status code number, message) of an error frame."""
    if len(frame) < _ERR.size:
        return 2, "a truncated error frame"  # UNKNOWN
    code = _ERR.unpack_from(frame)[4]
    return code, bytes(frame[_ERR.size :]).decode(errors="replace")
