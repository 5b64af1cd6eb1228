"""The Open Inference Protocol (KServe v2) over gRPC on node 1.

Service ``inference.GRPCInferenceService`` with ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata and ModelInfer. One model is served (``model_name`` in the spec,
version ``"1"``):

- input ``INPUT``: ``FP32`` images already normalised like the training data, or ``UINT8`` raw
  pixels (the node normalises them with the checkpoint's mean/std); shape ``[B, C, H, W]``; tensor
  bytes in ``raw_input_contents`` (or ``contents.fp32_contents`` / ``contents.uint_contents``).
- outputs ``PROBS`` (FP32 ``[B, K]`` class probabilities), ``EXIT_NODE`` (INT32 ``[B]``, 1-based
  node whose exit answered), ``DEGRADED`` (BOOL ``[B]``: answered earlier than the policy wanted
  because of the deadline or a failed/slow successor), ``SCORE`` (FP32 ``[B]``, the policy score at
  the exit); all four unless the request names a subset. Degraded rows also get a response
  parameter ``degraded_reasons`` (comma-separated, one entry per row, empty for normal rows).
- deadline: the request parameter ``timeout`` (int64, microseconds, as the protocol defines it,
  counted from the request's arrival at node 1) and/or the gRPC deadline of the call, and/or the
  parameter ``deadline_unix_us`` (int64, absolute wall-clock deadline in microseconds since the
  epoch, for clients whose clock is synchronised with the nodes'); the earliest wins. With
  ``sent_unix_us`` (int64, the client's wall clock when it sent the request) node 1 also measures
  the client link's one-way time and keeps that much for the answer's way back; without it, it
  keeps ``return_margin_ms``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from .. import __version__
from .protos import kserve_v2_pb2 as pb
from .tensors import BadTensor, check_finite

if TYPE_CHECKING:
    from .core import NodeCore

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
INPUT = "INPUT"
OUTPUTS = {"PROBS": "FP32", "EXIT_NODE": "INT32", "DEGRADED": "BOOL", "SCORE": "FP32"}
_NP = {"FP32": np.float32, "UINT8": np.uint8, "INT32": np.int32, "BOOL": np.bool_}


class BadRequest(ValueError):
    """A ModelInfer request is malformed; the message names the field and what is expected."""


def parse_infer(
    req: pb.ModelInferRequest,
    *,
    model_name: str,
    input_shape: tuple[int, ...],
    max_batch: int,
    normalization: dict[str, list[float]] | None,
) -> tuple[np.ndarray, float | None, list[str]]:
    """Validate a request; return (x float32 (B, C, H, W), timeout seconds or None, outputs)."""
    if req.model_name != model_name:
        raise BadRequest(f"unknown model {req.model_name!r}; this server serves {model_name!r}")
    if req.model_version not in ("", "1"):
        raise BadRequest(f"model {model_name!r} has only version '1', got {req.model_version!r}")
    if len(req.inputs) != 1:
        raise BadRequest(f"need exactly one input tensor named {INPUT!r}, got {len(req.inputs)}")
    t = req.inputs[0]
    if t.name != INPUT:
        raise BadRequest(f"unknown input {t.name!r}; the model's input is {INPUT!r}")
    if t.datatype not in ("FP32", "UINT8"):
        raise BadRequest(f"input datatype {t.datatype!r} is not supported; send FP32 (normalised) or UINT8 (pixels)")
    shape = tuple(int(s) for s in t.shape)
    want = ", ".join(str(s) for s in input_shape)
    if len(shape) != 1 + len(input_shape) or shape[1:] != tuple(input_shape):
        raise BadRequest(f"input shape {list(shape)} does not match the model's [B, {want}]")
    if not 1 <= shape[0] <= max_batch:
        raise BadRequest(f"batch size {shape[0]} is outside 1..{max_batch}")
    dtype = np.dtype(_NP[t.datatype])
    n = math.prod(shape)
    if len(req.raw_input_contents):
        if len(req.raw_input_contents) != 1:
            raise BadRequest(f"raw_input_contents has {len(req.raw_input_contents)} entries for 1 input")
        if t.HasField("contents"):
            raise BadRequest("give the tensor either in raw_input_contents or in contents, not both")
        raw = req.raw_input_contents[0]
        if len(raw) != n * dtype.itemsize:
            what = "truncated" if len(raw) < n * dtype.itemsize else "too long"
            raise BadRequest(
                f"input tensor is {what}: {len(raw)} bytes for shape {list(shape)} of {t.datatype} "
                f"(needs {n * dtype.itemsize})"
            )
        x = np.frombuffer(raw, dtype=dtype).reshape(shape)
    elif t.HasField("contents"):
        vals = t.contents.fp32_contents if t.datatype == "FP32" else t.contents.uint_contents
        if len(vals) != n:
            raise BadRequest(f"input contents hold {len(vals)} values for shape {list(shape)} (needs {n})")
        if t.datatype == "UINT8" and any(v > 255 for v in vals):
            raise BadRequest("UINT8 input contents must be in 0..255")
        x = np.asarray(vals, dtype=dtype).reshape(shape)
    else:
        raise BadRequest("input tensor has no data; send it in raw_input_contents")
    if t.datatype == "FP32":
        try:
            check_finite(x, "input")
        except BadTensor as e:
            raise BadRequest(str(e)) from e
        x = x.astype(np.float32, copy=False)
    else:
        if not normalization:
            raise BadRequest(
                "the checkpoint has no normalisation statistics, so UINT8 input cannot be used; "
                "send FP32 normalised images"
            )
        m = np.asarray(normalization["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(normalization["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x.astype(np.float32) / np.float32(255.0) - m) / s
    timeout = None
    if "timeout" in req.parameters:
        p = req.parameters["timeout"]
        kind = p.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param"):
            raise BadRequest(f"parameter 'timeout' must be an integer number of microseconds, got {kind}")
        us = getattr(p, kind)
        if us <= 0:
            raise BadRequest(f"parameter 'timeout' must be > 0 microseconds, got {us}")
        timeout = us / 1e6
    for name in ("deadline_unix_us", "sent_unix_us"):
        if name in req.parameters:
            kind = req.parameters[name].WhichOneof("parameter_choice")
            if kind not in ("int64_param", "uint64_param") or getattr(req.parameters[name], kind) <= 0:
                raise BadRequest(f"parameter {name!r} must be a positive integer (microseconds since the epoch)")
    outputs = [o.name for o in req.outputs] or list(OUTPUTS)
    for o in outputs:
        if o not in OUTPUTS:
            raise BadRequest(f"unknown output {o!r}; available: {', '.join(OUTPUTS)}")
    if len(set(outputs)) != len(outputs):
        raise BadRequest("an output is requested twice")
    return x, timeout, outputs


def _int_param(p: Any) -> int:
    return int(getattr(p, p.WhichOneof("parameter_choice")))


class KServeServicer:
    """Handlers for ``inference.GRPCInferenceService``, registered as a generic handler on the server."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.name = core.spec.model_name
        self._answer_counters: dict[int, Any] = {}

    def register(self, server: grpc.aio.Server) -> None:
        table = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )
            for name, (fn, req, resp) in table.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def model_ready(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self.name and request.version in ("", "1"))

    async def server_metadata(self, request, context):
        return pb.ServerMetadataResponse(name="distree", version=__version__, extensions=[])

    async def model_metadata(self, request, context):
        if request.name != self.name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}; this server serves {self.name!r}"
            )
        core = self.core
        T = pb.ModelMetadataResponse.TensorMetadata  # noqa: N806
        return pb.ModelMetadataResponse(
            name=self.name,
            versions=["1"],
            platform=f"distree/{core.model_label}",
            inputs=[T(name=INPUT, datatype="FP32", shape=[-1, *core.input_shape])],
            outputs=[
                T(name="PROBS", datatype="FP32", shape=[-1, core.num_classes]),
                T(name="EXIT_NODE", datatype="INT32", shape=[-1]),
                T(name="DEGRADED", datatype="BOOL", shape=[-1]),
                T(name="SCORE", datatype="FP32", shape=[-1]),
            ],
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        core = self.core
        clock = core.clock
        now = clock.monotonic()
        try:
            x, timeout, outputs = parse_infer(
                request,
                model_name=self.name,
                input_shape=core.input_shape,
                max_batch=core.spec.max_request_batch,
                normalization=core.sidecar.get("normalization"),
            )
        except BadRequest as e:
            core.metrics.rejected.labels(node=core.metrics.node, code="INVALID_ARGUMENT").inc()
            log.info("rejected ModelInfer: %s", e, extra={"event": "rejected", "request_id": request.id})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable
        b = x.shape[0]
        params = request.parameters
        # the answer's way back to the client: measured from the client's send time when it gives one
        back = core.margin
        if "sent_unix_us" in params:
            up = clock.wall() - _int_param(params["sent_unix_us"]) / 1e6
            back = max(core.margin, min(up, 10.0))
        dl = np.inf
        if timeout is not None:
            dl = now + timeout - core.margin
        if "deadline_unix_us" in params:
            dl = min(dl, now + (_int_param(params["deadline_unix_us"]) / 1e6 - clock.wall()) - back)
        tr = context.time_remaining()
        if tr is not None:
            dl = min(dl, now + tr - core.margin)
        chunk = await core.submit(core.next_ids(b), x, {}, [dl] * b)
        answers = chunk.answers
        resp = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        exit_nodes = [a.exit_node for a in answers]
        degraded = [a.degraded for a in answers]
        arrays = {
            "PROBS": lambda: np.array([a.probs for a in answers], dtype=np.float32).reshape(b, core.num_classes),
            "EXIT_NODE": lambda: np.array(exit_nodes, dtype=np.int32),
            "DEGRADED": lambda: np.array(degraded, dtype=np.bool_),
            "SCORE": lambda: np.array([a.score for a in answers], dtype=np.float32),
        }
        for name in outputs:
            a = arrays[name]()
            resp.outputs.add(name=name, datatype=OUTPUTS[name], shape=a.shape)
            resp.raw_output_contents.append(a.tobytes())
        if any(degraded):
            resp.parameters["degraded_reasons"].string_param = ",".join(a.reason for a in answers)
        counters = self._answer_counters
        for e in exit_nodes:
            c = counters.get(e)
            if c is None:
                c = counters[e] = core.metrics.answers.labels(node="1", exit_node=str(e))
            c.inc()
        return resp
