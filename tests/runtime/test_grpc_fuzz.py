"""A hypothesis fuzz of the gRPC services of a real cluster (4 node processes on loopback, started once
for the module): ``ChainNode/Forward`` on node 2 and ``ModelInfer`` (Open Inference Protocol) on node
1, 1,000 cases each — protobuf messages with random field values, and random bytes as the whole
message.

Every call ends OK (with one answer per row) or with a specific code: ``INVALID_ARGUMENT`` for a
malformed request, ``NOT_FOUND`` for an unknown model or version, ``RESOURCE_EXHAUSTED`` over a limit;
never ``UNKNOWN``/``INTERNAL``, never a node that stops answering. Every 100 cases the node answers a
known request exactly as before the fuzz, and each refusal is counted once in
``distree_rejected_total{code}``.
"""

from __future__ import annotations

import math
import urllib.request
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from _rt import Artifacts, running, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distree.policies import encode_state
from distree.runtime.client import build_request, make_channel
from distree.runtime.cluster import free_ports
from distree.runtime.kserve import SERVICE
from distree.runtime.protos import kserve_v2_pb2 as pb
from distree.runtime.protos import node_pb2
from distree.runtime.spec import ClusterSpec
from distree.runtime.tensors import to_proto

pytestmark = pytest.mark.xdist_group("grpc-fuzz")

CASES = 1000
CHECK_EVERY = 100
CALL_TIMEOUT_S = 30.0
FUZZ = settings(
    max_examples=CASES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
#: every code a call may end with besides OK (see the module doc)
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def cluster(rt: Artifacts) -> Iterator[ClusterSpec]:
    ports = free_ports(2)
    spec = write_spec(
        rt,
        "grpc-fuzz",
        node_extra={1: {"metrics_port": ports[0]}, 2: {"metrics_port": ports[1]}},
        max_request_batch=64,
    )
    with running(spec):
        yield spec


def rejected(port: int) -> Counter:
    """``distree_rejected_total`` of a node by code."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: Counter = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "distree_rejected_total":
                out[s.labels["code"]] += int(s.value)
    return out


def _call(rpc, request, codes: Counter):
    """One call; returns the response (None on an allowed error code), counting the code."""
    try:
        resp = rpc(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        codes[e.code().name] += 1
        assert e.code() in ALLOWED, (e.code(), e.details())
        assert e.details() and len(e.details()) > 10, e.details()
        return None
    codes["OK"] += 1
    return resp


# ---------------------------------------------------------------------------------------- Forward
_text = st.text(max_size=12)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_dims = st.one_of(st.integers(-3, 40), st.sampled_from([0, 2**31, 2**40, 2**62, -(2**63), 2**64 - 1]))


@st.composite
def _state(draw, rows: int) -> bytes:
    """A policy state: random bytes, or a valid encoding with random keys, dtypes and shapes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    n = draw(st.integers(1, 3))
    state = {}
    for _ in range(n):
        dt = draw(st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "float16", "int32"]))
        lead = draw(st.sampled_from([rows, rows, 0, rows + 1, 1]))
        shape = [lead, *draw(st.lists(st.integers(0, 3), max_size=2))]
        a = np.frombuffer(draw(st.binary(min_size=8 * math.prod(shape), max_size=8 * math.prod(shape))), np.uint8)
        flat = a[: math.prod(shape) * np.dtype(dt).itemsize].view(dt)
        state[draw(st.sampled_from(["s", "scores", "x", "", "é"]))] = flat.reshape(shape)
    return encode_state(state)


@st.composite
def forward_request(draw, hop: tuple[int, ...]) -> bytes:
    """A ``ForwardRequest`` (serialized) near or far from a valid one, or random bytes."""
    kind = draw(st.sampled_from(["valid-ish", "valid-ish", "fields", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    rows = draw(st.integers(1, 4)) if kind == "valid-ish" else draw(st.integers(0, 70))
    shape = [rows, *hop] if kind == "valid-ish" or draw(st.booleans()) else draw(st.lists(_dims, max_size=5))
    dtype = (
        "float32"
        if kind == "valid-ish" and draw(st.booleans())
        else draw(
            st.sampled_from(
                ["float32", "float64", "float16", "int8", "uint8", "", "bool", "complex64", "<f4", "float32 "]
            )
        )
    )
    t = node_pb2.Tensor(dtype=dtype)
    try:
        t.shape.extend(shape)
    except ValueError:  # outside int64: the wire cannot carry it
        t.shape.extend([rows, *hop])
    n = math.prod(shape) if all(0 <= d <= 1 << 16 for d in shape) and math.prod(shape) < 1 << 16 else 64
    data = draw(
        st.one_of(
            st.just(np.zeros(n, np.float32).tobytes()),
            st.lists(_floats32, min_size=1, max_size=16).map(lambda v: np.resize(np.float32(v), n).tobytes()),
            st.binary(max_size=4 * n + 8),
            st.floats(width=32, allow_infinity=False, allow_nan=False).map(
                lambda v: np.full(n, v, np.float32).tobytes()
            ),
        )
    )
    t.data = data
    req = node_pb2.ForwardRequest(features=t, from_node=draw(st.integers(-(2**31), 2**31 - 1)))
    ids = [f"r{i}" for i in range(rows)]
    req.request_ids.extend(
        ids if draw(st.booleans()) else draw(st.lists(st.one_of(_text, st.sampled_from(ids or ["r"])), max_size=6))
    )
    if draw(st.booleans()):
        req.deadline_unix_s.extend(
            draw(st.lists(_floats, min_size=rows, max_size=rows) | st.lists(_floats, max_size=6))
        )
    if draw(st.integers(0, 3)) == 0:
        req.policy_state = draw(_state(rows))
    return req.SerializeToString()


def test_fuzz_forward(rt: Artifacts, cluster: ClusterSpec):
    hop = tuple(int(s) for s in rt.trace.cost.hop_shapes[0])
    node = cluster.nodes[1]
    good = node_pb2.ForwardRequest(
        request_ids=["known-a", "known-b"], features=to_proto(np.zeros((2, *hop), np.float32)), from_node=1
    )
    codes: Counter = Counter()
    with make_channel(node.address, max_message_bytes=64 << 20) as ch:
        forward = ch.unary_unary("/distree.node.v1.ChainNode/Forward")  # bytes in, bytes out

        def known() -> list[tuple[str, int, tuple[float, ...]]]:
            r = node_pb2.ForwardResponse.FromString(forward(good.SerializeToString(), timeout=CALL_TIMEOUT_S))
            return [(a.request_id, a.exit_node, tuple(np.round(a.probs, 5))) for a in r.answers]

        expected = known()
        assert [a[0] for a in expected] == ["known-a", "known-b"] and all(2 <= a[1] <= 4 for a in expected)
        before = rejected(node.metrics_port)
        seen = [0]

        @FUZZ
        @given(raw=forward_request(hop))
        def case(raw: bytes) -> None:
            resp = _call(forward, raw, codes)
            if resp is not None:
                req = node_pb2.ForwardRequest.FromString(raw)
                r = node_pb2.ForwardResponse.FromString(resp)
                assert sorted(a.request_id for a in r.answers) == sorted(req.request_ids)
                assert all(2 <= a.exit_node <= 4 for a in r.answers)
            seen[0] += 1
            if seen[0] % CHECK_EVERY == 0:
                assert known() == expected

        case()
        assert known() == expected
        after = rejected(node.metrics_port)
    assert seen[0] >= CASES, seen
    assert codes["OK"] >= 50 and codes["INVALID_ARGUMENT"] >= 200, codes
    for code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
        assert after[code] - before[code] == codes[code], (code, codes, before, after)


# -------------------------------------------------------------------------------------- ModelInfer
_DATATYPES = ["FP32", "UINT8", "INT32", "INT64", "BOOL", "FP64", "BYTES", "FP16", "", "fp32", "UINT16"]
_CONTENTS = {
    "bool_contents": st.lists(st.booleans(), max_size=70),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=70),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 255), min_size=0, max_size=140),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=70),
    "fp32_contents": st.lists(st.floats(width=32, allow_nan=True), max_size=140),
    "fp64_contents": st.lists(_floats, max_size=70),
    "bytes_contents": st.lists(st.binary(max_size=8), max_size=4),
}
_param_keys = st.sampled_from(
    ["timeout", "deadline_unix_us", "sent_unix_us", "priority", "binary_data_output", "classification", "x"]
)


def _set_param(p: pb.InferParameter, draw) -> None:
    kind = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "none"]))
    if kind == "bool":
        p.bool_param = draw(st.booleans())
    elif kind == "int64":
        p.int64_param = draw(st.integers(-(2**63), 2**63 - 1) | st.integers(-5, 10**7))
    elif kind == "string":
        p.string_param = draw(_text)
    elif kind == "double":
        p.double_param = draw(_floats)
    elif kind == "uint64":
        p.uint64_param = draw(st.integers(0, 2**64 - 1))


@st.composite
def infer_request(draw, image_shape: tuple[int, ...], images: np.ndarray) -> bytes:
    """A ``ModelInferRequest`` (serialized) near or far from a valid one, or random bytes."""
    kind = draw(st.sampled_from(["valid-ish", "valid-ish", "fields", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    model = draw(st.sampled_from(["distree"] * 12 + ["", "other", "distree/1"]))
    req = pb.ModelInferRequest(model_name=model, model_version=draw(st.sampled_from(["", "", "", "1", "1", "2", "x"])))
    req.id = draw(_text)
    n_inputs = 1 if kind == "valid-ish" else draw(st.integers(0, 2))
    for _ in range(n_inputs):
        rows = draw(st.integers(1, 4))
        if kind == "valid-ish":
            name, dt, shape = "INPUT", draw(st.sampled_from(["UINT8", "FP32"])), [rows, *image_shape]
        else:
            name = draw(st.sampled_from(["INPUT", "INPUT", "IMAGE", ""]))
            dt = draw(st.sampled_from(_DATATYPES))
            shape = draw(st.one_of(st.just([rows, *image_shape]), st.lists(_dims, max_size=5)))
        t = req.inputs.add(name=name, datatype=dt)
        try:
            t.shape.extend(shape)
        except ValueError:
            t.shape.extend([rows, *image_shape])
        for _ in range(draw(st.integers(0, 2)) if kind == "fields" else 0):
            _set_param(t.parameters[draw(_param_keys)], draw)
        x = images[:rows]
        how = "raw" if kind == "valid-ish" else draw(st.sampled_from(["raw", "raw", "contents", "garbage", "none"]))
        if how == "raw":
            if dt == "FP32":
                f = (
                    x.astype(np.float32) / 255.0
                    if draw(st.booleans())
                    else np.resize(np.float32(draw(st.lists(st.floats(width=32), min_size=1, max_size=16))), x.size)
                )
                req.raw_input_contents.append(np.asarray(f, np.float32).tobytes())
            else:
                req.raw_input_contents.append(x.tobytes())
        elif how == "contents":
            field = draw(st.sampled_from(list(_CONTENTS)))
            getattr(t.contents, field).extend(
                x.reshape(-1).tolist() if field == "uint_contents" and draw(st.booleans()) else draw(_CONTENTS[field])
            )
        elif how == "garbage":
            req.raw_input_contents.append(draw(st.binary(max_size=300)))
    if kind == "fields" and draw(st.integers(0, 4)) == 0:  # raw contents that do not match the inputs
        req.raw_input_contents.append(draw(st.binary(max_size=70)))
    if kind == "valid-ish" and draw(st.booleans()):  # deadline parameters that make sense
        req.parameters["timeout"].int64_param = draw(st.integers(1, 10**8))
    for _ in range(draw(st.integers(0, 3)) if kind == "fields" or draw(st.integers(0, 3)) == 0 else 0):
        _set_param(req.parameters[draw(_param_keys)], draw)
    names = ["PROBS", "EXIT_NODE", "DEGRADED", "SCORE"] + (["LOGITS", ""] if kind == "fields" else [])
    for _ in range(draw(st.integers(0, 3))):
        o = req.outputs.add(name=draw(st.sampled_from(names)))
        for _ in range(draw(st.integers(0, 2)) if kind == "fields" or draw(st.booleans()) else 0):
            _set_param(o.parameters[draw(st.sampled_from(["classification", "binary_data", "x"]))], draw)
    return req.SerializeToString()


def test_fuzz_model_infer(rt: Artifacts, cluster: ClusterSpec):
    node = cluster.nodes[0]
    image_shape = tuple(int(s) for s in rt.images.shape[1:])
    exit_off, pred_off = rt.offline()
    good = build_request(rt.images[:16])
    codes: Counter = Counter()
    with make_channel(node.address, max_message_bytes=64 << 20) as ch:
        infer = ch.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes in, bytes out

        def known() -> None:
            r = pb.ModelInferResponse.FromString(infer(good.SerializeToString(), timeout=CALL_TIMEOUT_S))
            out = {o.name: (o, raw) for o, raw in zip(r.outputs, r.raw_output_contents, strict=True)}
            exits = np.frombuffer(out["EXIT_NODE"][1], np.int32)
            probs = np.frombuffer(out["PROBS"][1], np.float32).reshape(16, -1)
            np.testing.assert_array_equal(exits - 1, exit_off[:16])
            np.testing.assert_array_equal(probs.argmax(axis=1), pred_off[:16])

        known()
        before = rejected(node.metrics_port)
        seen = [0]

        @FUZZ
        @given(raw=infer_request(image_shape, rt.images))
        def case(raw: bytes) -> None:
            resp = _call(infer, raw, codes)
            if resp is not None:
                req = pb.ModelInferRequest.FromString(raw)
                r = pb.ModelInferResponse.FromString(resp)
                assert r.model_name == "distree" and r.id == req.id
                assert len(r.outputs) == (len(req.outputs) or 4) == len(r.raw_output_contents)
                rows = req.inputs[0].shape[0]
                assert all(o.shape[0] == rows for o in r.outputs)
            seen[0] += 1
            if seen[0] % CHECK_EVERY == 0:
                known()

        case()
        known()
        after = rejected(node.metrics_port)
    assert seen[0] >= CASES, seen
    assert codes["OK"] >= 50 and codes["INVALID_ARGUMENT"] >= 200 and codes["NOT_FOUND"] >= 20, codes
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"):
        assert after[code] - before[code] == codes[code], (code, codes, before, after)
