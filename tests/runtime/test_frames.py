"""Raw frames of the node stream: round trips, and every malformed frame refused with a clear error."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from distree.runtime import frames
from distree.runtime.protos import node_pb2
from distree.runtime.tensors import BadTensor

ROW = (4, 2, 2)


def _fwd(h: np.ndarray | None = None, **kw) -> bytes:
    h = np.arange(2 * 16, dtype=np.float32).reshape(2, *ROW) if h is None else h
    b = h.shape[0]
    args = {"row_ids": list(range(7, 7 + b)), "row_deadlines": [0.0] * b, "deadline_unix_s": 1.7e9, "from_node": 2}
    return frames.forward_frame(5, h=h, **{**args, **kw})


def _decode(frame: bytes, max_rows: int = 8) -> frames.ForwardFrame:
    return frames.decode_forward(frame, dtype="float32", row_shape=ROW, max_rows=max_rows)


def test_forward_round_trip():
    h = np.random.default_rng(0).normal(size=(3, *ROW)).astype(np.float32)
    f = _decode(_fwd(h, row_deadlines=[1.7e9 + 1, 0.0, 1.7e9 + 2], state=b"STATE"))
    assert frames.frame_kind(_fwd(h)) == (frames.FORWARD, 5)
    assert f.rid == 5 and f.from_node == 2 and f.deadline_unix_s == 1.7e9 and f.state == b"STATE"
    assert f.row_ids == [7, 8, 9] and f.row_deadlines == [1.7e9 + 1, 0.0, 1.7e9 + 2]
    np.testing.assert_array_equal(f.x, h)
    assert f.x.flags.writeable and f.x.flags.c_contiguous


def test_reply_round_trip():
    answers = [
        node_pb2.Answer(request_id="a", exit_node=4, probs=[0.25, 0.75], score=0.5),
        node_pb2.Answer(request_id="b", exit_node=2, probs=[1.0, 0.0], score=0.9, degraded=True, reason="deadline"),
    ]
    r = frames.decode_reply(frames.encode_reply(9, answers, compute_s=0.001, server_s=0.003), ["x", "y"])
    assert [a.request_id for a in r.answers] == ["x", "y"]  # the caller's ids, in row order
    assert [a.exit_node for a in r.answers] == [4, 2] and [a.reason for a in r.answers] == ["", "deadline"]
    assert list(r.answers[0].probs) == [0.25, 0.75] and r.answers[1].degraded and r.answers[1].score == 0.9
    assert r.compute_s == 0.001 and r.server_s == 0.003
    with pytest.raises(frames.BadFrame, match="answers 2 rows"):
        frames.decode_reply(frames.encode_reply(9, answers), ["x"])
    code, msg = frames.decode_error(frames.encode_error(3, 3, "bad shape"))
    assert (code, msg) == (3, "bad shape") and frames.frame_kind(frames.cancel_frame(4)) == (frames.CANCEL, 4)


def _patch(frame: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(frame)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: b"", "shorter than the 12-byte frame prefix"),
        (lambda: b"XX" + _fwd()[2:], "magic"),
        (lambda: _patch(_fwd(), 2, "<B", 9), "version 9"),
        (lambda: _patch(_fwd(), 3, "<B", 7), "unknown frame kind"),
        (lambda: _fwd()[:20], "shorter than its"),
        (lambda: _fwd(np.zeros((2, 4, 2, 3), np.float32)), "shape"),
        (lambda: _fwd(np.zeros((2, *ROW), np.float64)), "dtype"),
        (lambda: _fwd(np.zeros((9, *ROW), np.float32)), "batch size 9 is outside 1..8"),
        (lambda: _fwd()[:-4], "carry 124 bytes"),
        (lambda: _fwd() + b"1234", "carry 132 bytes"),
        (lambda: _fwd(np.full((2, *ROW), np.nan, np.float32)), "NaN"),
        (lambda: _fwd(row_ids=[1, 1]), "distinct row ids"),
        (lambda: _fwd(row_deadlines=[float("nan"), 0.0]), "deadlines"),
        (lambda: _fwd()[:40], "row shape"),
        (lambda: _fwd()[:50], "row table"),
        (lambda: _patch(_fwd(), 28, "<B", 200), "dtype code 200"),
        (lambda: _patch(_fwd(), 29, "<B", 40), "dimensions"),
    ],
)
def test_malformed_forward_frames_are_refused(make, needle):
    with pytest.raises(BadTensor, match=needle):
        frame = make()
        frames.frame_kind(frame)
        _decode(frame)
