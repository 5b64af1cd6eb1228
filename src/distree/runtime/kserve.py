"""The Open Inference Protocol (KServe v2) over gRPC on node 1, with Triton's extensions.

Service ``inference.GRPCInferenceService``: ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelInfer, ModelStreamInfer (bidirectional: one response per request, carrying its
id; a bad request gets an ``error_message`` and the stream goes on), ModelConfig, ModelStatistics
and RepositoryIndex. This module only translates messages: validation, inference and statistics
are the :class:`~distree.runtime.dataplane.DataPlane`'s, shared with the HTTP/REST endpoint.

Tensors travel in ``raw_input_contents`` / ``raw_output_contents`` (``contents`` is accepted for the
input too). Errors: ``NOT_FOUND`` for an unknown model or version, ``INVALID_ARGUMENT`` for a
malformed request, ``UNAVAILABLE`` while the node is not ready, ``RESOURCE_EXHAUSTED`` over the
message limit or without room under ``max_inflight_bytes`` in time (:mod:`.limits`,
:mod:`.admission`). See :mod:`.dataplane` for the deadline parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from .dataplane import DataPlane
from .oip import (
    INPUT,
    OUTPUTS,
    BadRequest,
    InferRequest,
    InferResponse,
    InputTensor,
    NotFound,
    OipError,
    RequestedOutput,
)
from .protos import kserve_v2_pb2 as pb

if TYPE_CHECKING:
    from .core import NodeCore

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
#: the ``contents`` field that carries each input datatype
_CONTENTS = {
    "FP32": "fp32_contents",
    "UINT8": "uint_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "BOOL": "bool_contents",
    "FP64": "fp64_contents",
}
#: most requests of one stream inside the node at a time (further ones wait to be read)
STREAM_WINDOW = 64


def param_value(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def set_param(p: pb.InferParameter, v: Any) -> None:
    if isinstance(v, bool):
        p.bool_param = v
    elif isinstance(v, int):
        p.int64_param = v
    elif isinstance(v, float):
        p.double_param = v
    else:
        p.string_param = str(v)


def to_request(r: pb.ModelInferRequest) -> InferRequest:
    """The transport-independent form of a ``ModelInferRequest`` (tensor bytes are not copied twice)."""
    raws = r.raw_input_contents
    if len(raws) and len(raws) != len(r.inputs):
        raise BadRequest(f"raw_input_contents has {len(raws)} entries for {len(r.inputs)} input(s)")
    inputs = []
    for i, t in enumerate(r.inputs):
        data: bytes | list | None = None
        if len(raws):
            if t.HasField("contents"):
                raise BadRequest("give the tensor either in raw_input_contents or in contents, not both")
            data = raws[i]
        elif t.HasField("contents"):
            f = _CONTENTS.get(t.datatype)
            data = list(getattr(t.contents, f)) if f else []
        inputs.append(InputTensor(t.name, t.datatype, list(t.shape), data))
    return InferRequest(
        model=r.model_name,
        version=r.model_version,
        id=r.id,
        inputs=inputs,
        outputs=[RequestedOutput(o.name, {k: param_value(v) for k, v in o.parameters.items()}) for o in r.outputs],
        parameters={k: param_value(v) for k, v in r.parameters.items()},
    )


def to_response(resp: InferResponse) -> pb.ModelInferResponse:
    m = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version, id=resp.id)
    for o in resp.outputs:
        m.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
        m.raw_output_contents.append(o.raw())
    for k, v in resp.parameters.items():
        set_param(m.parameters[k], v)
    return m


class KServeServicer:
    """Handlers for ``inference.GRPCInferenceService``, registered as a generic handler on the server."""

    def __init__(self, core: NodeCore, plane: DataPlane | None = None) -> None:
        self.core = core
        self.plane = plane or DataPlane(core)
        self.name = self.plane.name

    def register(self, server: grpc.aio.Server) -> None:
        unary: dict[str, tuple[Callable[..., Any], type[Message], type[Message]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )
            for name, (fn, req, resp) in unary.items()
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, e: OipError) -> None:
        await context.abort(getattr(grpc.StatusCode, e.status), str(e))

    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def model_ready(self, request, context):
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def server_metadata(self, request, context):
        return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

    async def model_metadata(self, request, context):
        try:
            md = self.plane.model_metadata(request.name, request.version)
        except OipError as e:
            await self._abort(context, e)
        return json_format.ParseDict(md, pb.ModelMetadataResponse())

    async def model_config(self, request, context):
        try:
            cfg = self.plane.model_config(request.name, request.version)
        except OipError as e:
            await self._abort(context, e)
        return pb.ModelConfigResponse(config=json_format.ParseDict(cfg, pb.ModelConfig()))

    async def model_statistics(self, request, context):
        try:
            st = self.plane.statistics(request.name, request.version)
        except OipError as e:
            await self._abort(context, e)
        return json_format.ParseDict(st, pb.ModelStatisticsResponse())

    async def repository_index(self, request, context):
        models = self.plane.repository_index(request.ready)
        return json_format.ParseDict({"models": models}, pb.RepositoryIndexResponse())

    async def _infer(self, request: pb.ModelInferRequest, time_remaining: float | None) -> pb.ModelInferResponse:
        arrival = self.core.clock.monotonic()
        try:
            self.plane.resolve(request.model_name, request.model_version)  # an unknown model is NOT_FOUND first
            req = to_request(request)
        except OipError as e:
            self.plane.reject(e, arrival, request.id, model_known=not isinstance(e, NotFound))
            raise
        return to_response(await self.plane.infer(req, arrival=arrival, time_remaining=time_remaining))

    async def model_infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        try:
            return await self._infer(request, context.time_remaining())
        except OipError as e:
            await self._abort(context, e)

    async def model_stream_infer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests are answered concurrently (so they batch and pipeline), each as soon as it is done."""
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                msg = pb.ModelStreamInferResponse(infer_response=await self._infer(request, context.time_remaining()))
            except OipError as e:
                head = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version)
                head.id = request.id
                msg = pb.ModelStreamInferResponse(error_message=str(e), infer_response=head)
            except Exception as e:  # one failed message must not end the stream
                log.exception("stream request %r failed", request.id)
                msg = pb.ModelStreamInferResponse(error_message=f"internal error: {e}")
            finally:
                window.release()
            out.put_nowait(msg)

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    t = asyncio.create_task(one(request))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (msg := await out.get()) is not None:
                yield msg
        finally:
            reader.cancel()
            for t in list(tasks):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


__all__ = ["INPUT", "OUTPUTS", "SERVICE", "KServeServicer", "param_value", "set_param", "to_request", "to_response"]
