"""The Open Inference Protocol's inference request and response, independent of the transport.

The gRPC servicer (:mod:`.kserve`) and the HTTP/REST handlers (:mod:`.rest`) turn their wire form
into an :class:`InferRequest` and an :class:`InferResponse` back; everything between (validation,
deadlines, inference, classification, statistics) is the data plane's (:mod:`.dataplane`), once for
both. Errors are :class:`OipError` with the protocol status each transport maps to its own code.

The model's tensors: input ``INPUT`` (``FP32`` normalised images or ``UINT8`` raw pixels,
``[B, C, H, W]``); outputs ``PROBS`` (FP32 ``[B, K]``), ``EXIT_NODE`` (INT32 ``[B]``), ``DEGRADED``
(BOOL ``[B]``), ``SCORE`` (FP32 ``[B]``). Classification of ``PROBS`` gives BYTES ``[B, c]``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .tensors import BadTensor, check_finite

INPUT = "INPUT"
OUTPUTS = {"PROBS": "FP32", "EXIT_NODE": "INT32", "DEGRADED": "BOOL", "SCORE": "FP32"}
INPUT_TYPES = ("FP32", "UINT8")
NP_TYPES = {"FP32": np.float32, "UINT8": np.uint8, "INT32": np.int32, "BOOL": np.bool_}
#: the request parameters with a meaning here (all integers, microseconds)
TIME_PARAMETERS = ("timeout", "deadline_unix_us", "sent_unix_us")


class OipError(Exception):
    """A request the protocol refuses; ``status`` is the gRPC status name (the HTTP code follows)."""

    status = "INTERNAL"
    http = 500


class BadRequest(OipError, ValueError):
    """A malformed request; the message names the field and what is expected."""

    status, http = "INVALID_ARGUMENT", 400


class NotFound(OipError):
    """An unknown model or version."""

    status, http = "NOT_FOUND", 404


class TooLarge(OipError):
    """A request over the size limit."""

    status, http = "RESOURCE_EXHAUSTED", 413


class Unavailable(OipError):
    """The server is not ready (starting or draining)."""

    status, http = "UNAVAILABLE", 503


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: bytes | list | None  # raw little-endian bytes, or the values (flat or nested lists)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # plain values: bool, int, float, str


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None  # numeric outputs
    strings: list[bytes] | None = None  # BYTES outputs (row-major)
    parameters: dict[str, Any] = field(default_factory=dict)  # requested-output parameters, for the transport

    def raw(self) -> bytes:
        """The tensor's bytes as the binary extension and ``raw_output_contents`` carry them."""
        if self.strings is not None:
            return serialize_bytes(self.strings)
        assert self.array is not None
        return self.array.tobytes()

    def values(self) -> list:
        """The values, flattened row-major, as JSON carries them."""
        if self.strings is not None:
            return [s.decode("utf-8", "replace") for s in self.strings]
        assert self.array is not None
        return self.array.reshape(-1).tolist()


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Parsed:
    """A validated request: images (B, C, H, W) float32, the deadline parameters, the outputs."""

    x: np.ndarray
    timeout_s: float | None
    deadline_unix_s: float | None
    sent_unix_s: float | None
    outputs: list[tuple[str, int]]  # (name, class count; 0 = the tensor itself)


def serialize_bytes(items: list[bytes]) -> bytes:
    """BYTES tensor elements, each as a 4-byte little-endian length and its bytes (Triton's layout)."""
    return b"".join(struct.pack("<I", len(s)) + s for s in items)


def _int_param(params: dict[str, Any], name: str, *, what: str) -> int | None:
    if name not in params:
        return None
    v = params[name]
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"parameter {name!r} must be an integer number of microseconds{what}, got {v!r}")
    if v <= 0:
        raise BadRequest(f"parameter {name!r} must be > 0 microseconds{what}, got {v}")
    return v


def _values(data: list, datatype: str, n: int, shape: list[int]) -> np.ndarray:
    """JSON/contents values of a tensor (flat or nested row-major) as a flat array, checked."""
    try:
        a = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadRequest(f"input data is not a regular (flat or nested) list of numbers: {e}") from None
    if a.size != n:
        raise BadRequest(f"input data holds {a.size} values for shape {shape} (needs {n})")
    kind = a.dtype.kind
    if datatype == "UINT8":
        if n and kind not in "iu":
            raise BadRequest(f"UINT8 input data must be integers in 0..255, got values of type {a.dtype}")
        if n and (a.min() < 0 or a.max() > 255):
            raise BadRequest("UINT8 input data must be integers in 0..255")
    elif n and kind not in "iuf":
        raise BadRequest(f"FP32 input data must be numbers, got values of type {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        return a.astype(NP_TYPES[datatype]).reshape(-1)


def parse(
    req: InferRequest,
    *,
    input_shape: tuple[int, ...],
    max_batch: int,
    num_classes: int,
    normalization: dict[str, list[float]] | None,
) -> Parsed:
    """Validate a request for the served model (model and version already resolved)."""
    if len(req.inputs) != 1:
        raise BadRequest(f"need exactly one input tensor named {INPUT!r}, got {len(req.inputs)}")
    t = req.inputs[0]
    if t.name != INPUT:
        raise BadRequest(f"unknown input {t.name!r}; the model's input is {INPUT!r}")
    if t.datatype not in INPUT_TYPES:
        raise BadRequest(f"input datatype {t.datatype!r} is not supported; send FP32 (normalised) or UINT8 (pixels)")
    shape = list(t.shape)
    want = ", ".join(str(s) for s in input_shape)
    if len(shape) != 1 + len(input_shape) or tuple(shape[1:]) != tuple(input_shape):
        raise BadRequest(f"input shape {shape} does not match the model's [B, {want}]")
    if not 1 <= shape[0] <= max_batch:
        raise BadRequest(f"batch size {shape[0]} is outside 1..{max_batch}")
    dtype = np.dtype(NP_TYPES[t.datatype])
    n = math.prod(shape)
    if isinstance(t.data, bytes | bytearray | memoryview):
        raw = t.data
        if len(raw) != n * dtype.itemsize:
            what = "truncated" if len(raw) < n * dtype.itemsize else "too long"
            raise BadRequest(
                f"input tensor is {what}: {len(raw)} bytes for shape {shape} of {t.datatype} "
                f"(needs {n * dtype.itemsize})"
            )
        x: np.ndarray = np.frombuffer(raw, dtype=dtype).reshape(shape)
    elif isinstance(t.data, list):
        x = _values(t.data, t.datatype, n, shape).reshape(shape)
    else:
        raise BadRequest("input tensor has no data; send it as raw/binary bytes or as a list of values")
    if t.datatype == "FP32":
        try:
            check_finite(x, "input")
        except BadTensor as e:
            raise BadRequest(str(e)) from e
    else:
        if not normalization:
            raise BadRequest(
                "the checkpoint has no normalisation statistics, so UINT8 input cannot be used; "
                "send FP32 normalised images"
            )
        m = np.asarray(normalization["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(normalization["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x.astype(np.float32) / np.float32(255.0) - m) / s
    p = req.parameters
    timeout = _int_param(p, "timeout", what="")
    deadline = _int_param(p, "deadline_unix_us", what=" since the epoch")
    sent = _int_param(p, "sent_unix_us", what=" since the epoch")
    outputs = [(o.name, _class_count(o, num_classes)) for o in req.outputs] or [(o, 0) for o in OUTPUTS]
    for name, _ in outputs:
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output {name!r}; available: {', '.join(OUTPUTS)}")
    if len({name for name, _ in outputs}) != len(outputs):
        raise BadRequest("an output is requested twice")
    return Parsed(
        x.astype(np.float32, copy=False),
        None if timeout is None else timeout / 1e6,
        None if deadline is None else deadline / 1e6,
        None if sent is None else sent / 1e6,
        outputs,
    )


def _class_count(o: RequestedOutput, num_classes: int) -> int:
    """The output's ``classification`` parameter: how many top classes (clamped to the class count)."""
    c = o.parameters.get("classification", 0)
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise BadRequest(f"output {o.name!r}: parameter 'classification' must be an integer >= 0, got {c!r}")
    if c and o.name != "PROBS":
        raise BadRequest(f"output {o.name!r} cannot be classified; classification applies to 'PROBS' only")
    return min(c, num_classes)


def classify(probs: np.ndarray, count: int, labels: list[str]) -> list[bytes]:
    """Triton's classification strings ``"score:index[:label]"`` of the ``count`` best classes per row."""
    top = np.argsort(-probs, axis=1, kind="stable")[:, :count]
    out: list[bytes] = []
    for row, idx in zip(probs, top, strict=True):
        for i in idx.tolist():
            label = f":{labels[i]}" if i < len(labels) and labels[i] else ""
            out.append(f"{row[i]:f}:{i}{label}".encode())
    return out
