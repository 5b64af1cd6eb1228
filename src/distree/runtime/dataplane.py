"""Node 1's data plane of the Open Inference Protocol, shared by the gRPC and HTTP/REST transports.

One model is served (``model_name`` in the spec, version ``"1"``). :class:`DataPlane` resolves
model and version (``NotFound`` otherwise), answers metadata, model configuration and repository
index as plain dicts with the protocol's (and Triton's) field names, validates and runs inference
requests through :meth:`NodeCore.submit`, and keeps the statistics. Both transports call it and
only translate their wire format; neither validates nor counts on its own.

Deadline of a request: the parameter ``timeout`` (microseconds, counted from the request's
arrival), the transport's own deadline (gRPC), and ``deadline_unix_us`` (absolute wall clock); the
earliest wins. With ``sent_unix_us`` node 1 measures the client link's one-way time and keeps that
much for the answer's way back; without it, it keeps ``return_margin_ms``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .. import __version__
from .oip import (
    INPUT,
    OUTPUTS,
    BadRequest,
    InferRequest,
    InferResponse,
    NotFound,
    OipError,
    OutputTensor,
    Unavailable,
    classify,
    parse,
)
from .stats import ModelStats, TritonCollector
from .tensors import BadTensor

if TYPE_CHECKING:
    from .core import NodeCore
    from .protos.node_pb2 import Answer

log = logging.getLogger(__name__)

VERSION = "1"
#: the protocol extensions served (``ServerMetadata.extensions``)
EXTENSIONS = ["classification", "model_configuration", "model_repository", "statistics", "binary_tensor_data"]


class DataPlane:
    """Validation, inference, metadata and statistics of node 1, independent of the transport."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.name = core.spec.model_name
        self.ready = False  # set once the node serves, cleared when it drains
        self.labels: list[str] = [str(c) for c in core.sidecar.get("classes", [])]
        self.stats = ModelStats(self.name, VERSION, executions=lambda: core.counts["batches"])
        self._answer_counters: dict[int, Any] = {}
        core.metrics.registry.register(TritonCollector(lambda: [self.stats]))

    # ------------------------------------------------------------------ models
    def resolve(self, name: str, version: str = "") -> None:
        """``NotFound`` unless ``name`` is the served model and ``version`` is empty or one of its versions."""
        if name != self.name:
            raise NotFound(f"unknown model {name!r}; this server serves {self.name!r}")
        if version not in ("", VERSION):
            raise NotFound(f"model {name!r} has no version {version!r}; its only version is {VERSION!r}")

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.ready and name == self.name and version in ("", VERSION)

    def server_metadata(self) -> dict:
        return {"name": "distree", "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict:
        self.resolve(name, version)
        core = self.core
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": f"distree/{core.model_label}",
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *core.input_shape]}],
            "outputs": [
                {"name": "PROBS", "datatype": "FP32", "shape": [-1, core.num_classes]},
                {"name": "EXIT_NODE", "datatype": "INT32", "shape": [-1]},
                {"name": "DEGRADED", "datatype": "BOOL", "shape": [-1]},
                {"name": "SCORE", "datatype": "FP32", "shape": [-1]},
            ],
        }

    def model_config(self, name: str, version: str = "") -> dict:
        """Triton's model configuration (``ModelConfig``); dims exclude the batch dimension."""
        self.resolve(name, version)
        core, spec = self.core, self.core.spec
        # one value per row: dims [1] reshaped to a scalar, as Triton writes it
        row: dict[str, Any] = {"reshape": {"shape": []}}
        cfg: dict[str, Any] = {
            "name": self.name,
            "platform": f"distree/{core.model_label}",
            "backend": "distree",
            "max_batch_size": spec.max_request_batch,
            "input": [
                {"name": INPUT, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": list(core.input_shape)}
            ],
            "output": [
                {"name": "PROBS", "data_type": "TYPE_FP32", "dims": [core.num_classes]},
                {"name": "EXIT_NODE", "data_type": "TYPE_INT32", "dims": [1], **row},
                {"name": "DEGRADED", "data_type": "TYPE_BOOL", "dims": [1], **row},
                {"name": "SCORE", "data_type": "TYPE_FP32", "dims": [1], **row},
            ],
            "instance_group": [{"name": self.name, "count": 1, "kind": "KIND_CPU"}],
            "parameters": {
                "num_nodes": {"string_value": str(spec.num_nodes)},
                "policy": {"string_value": core.policy.name},
                "input_datatypes": {"string_value": "FP32,UINT8"},
                "classes": {"string_value": ",".join(self.labels)},
            },
        }
        b = spec.batching
        if b.max_batch_size > 1:
            cfg["dynamic_batching"] = {
                "preferred_batch_size": [b.max_batch_size],
                "max_queue_delay_microseconds": int(round(b.max_queue_delay_ms * 1000)),
                "preserve_ordering": False,
            }
        return cfg

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        if ready_only and not self.ready:
            return []
        state = "READY" if self.ready else "UNAVAILABLE"
        return [{"name": self.name, "version": VERSION, "state": state, "reason": ""}]

    def statistics(self, name: str = "", version: str = "") -> dict:
        """``{"model_stats": [...]}`` for one model (version) or, with an empty name, all of them."""
        if name or version:
            self.resolve(name, version)
        return {"model_stats": [self.stats.to_dict()]}

    # ------------------------------------------------------------------ inference
    def reject(self, exc: OipError, arrival: float, request_id: str = "", model_known: bool = True) -> None:
        """Count a refused request (a transport's decoding error or the data plane's own)."""
        core = self.core
        core.metrics.rejected.labels(node=core.metrics.node, code=exc.status).inc()
        if model_known:
            self.stats.failed(core.clock.monotonic() - arrival)
        log.info("rejected inference request: %s", exc, extra={"event": "rejected", "request_id": request_id})

    async def infer(self, req: InferRequest, *, arrival: float, time_remaining: float | None = None) -> InferResponse:
        """Validate and answer one request that arrived at monotonic time ``arrival``; ``time_remaining``
        is the transport's own deadline (seconds from now), if it has one."""
        try:
            self.resolve(req.model, req.version)
        except NotFound as e:
            self.reject(e, arrival, req.id, model_known=False)
            raise
        core = self.core
        try:
            if not self.ready:
                raise Unavailable("the server is not ready (starting or shutting down); retry later")
            p = parse(
                req,
                input_shape=core.input_shape,
                max_batch=core.spec.max_request_batch,
                num_classes=core.num_classes,
                normalization=core.sidecar.get("normalization"),
            )
            check_range(p.x, core.sidecar.get("normalization"))
        except OipError as e:
            self.reject(e, arrival, req.id)
            raise
        clock = core.clock
        now = clock.monotonic()
        # the answer's way back to the client: measured from the client's send time when it gives one
        back = core.margin if p.sent_unix_s is None else max(core.margin, min(clock.wall() - p.sent_unix_s, 10.0))
        dl = np.inf
        if p.timeout_s is not None:
            dl = arrival + p.timeout_s - core.margin
        if p.deadline_unix_s is not None:
            dl = min(dl, now + (p.deadline_unix_s - clock.wall()) - back)
        if time_remaining is not None:
            dl = min(dl, now + time_remaining - core.margin)
        b = p.x.shape[0]
        try:
            chunk = await core.submit(core.next_ids(b), p.x, {}, [dl] * b)
        except BadTensor as e:  # found while computing (a row the network turns into non-finite logits)
            err = BadRequest(str(e))
            self.reject(err, arrival, req.id)
            raise err from None
        answered = clock.monotonic()
        answers = cast("list[Answer]", chunk.answers)  # submit returns the chunk once every row has an answer
        degraded = [a.degraded for a in answers]
        exit_nodes = [a.exit_node for a in answers]
        probs = None
        outputs: list[OutputTensor] = []
        for name, count in p.outputs:
            if name == "PROBS":
                if probs is None:
                    probs = np.array([a.probs for a in answers], dtype=np.float32).reshape(b, core.num_classes)
                if count:
                    outputs.append(OutputTensor(name, "BYTES", [b, count], strings=classify(probs, count, self.labels)))
                    continue
                a = probs
            elif name == "EXIT_NODE":
                a = np.array(exit_nodes, dtype=np.int32)
            elif name == "DEGRADED":
                a = np.array(degraded, dtype=np.bool_)
            else:
                a = np.array([x.score for x in answers], dtype=np.float32)
            outputs.append(OutputTensor(name, OUTPUTS[name], list(a.shape), array=a))
        for o, r in zip(outputs, req.outputs, strict=False):
            o.parameters = r.parameters
        resp = InferResponse(self.name, VERSION, req.id, outputs)
        if any(degraded):
            resp.parameters["degraded_reasons"] = ",".join(a.reason for a in answers)
        counters = self._answer_counters
        for en in exit_nodes:
            c = counters.get(en)
            if c is None:
                c = counters[en] = core.metrics.answers.labels(node="1", exit_node=str(en))
            c.inc()
        done = clock.monotonic()
        infer_s = max(answered - chunk.t_in - chunk.queue_s, 0.0)
        self.stats.succeeded(b, done - arrival, chunk.queue_s, now - arrival, infer_s, done - answered)
        return resp


#: how far outside the normalised pixel range [(0 - mean) / std, (1 - mean) / std] an input may go, in
#: multiples of that range's width (other preprocessing, augmentation); without normalisation, |x| <= this
RANGE_SLACK = 1.0
UNNORMALISED_LIMIT = 1e4


def check_range(x: np.ndarray, normalization: dict[str, list[float]] | None) -> None:
    """Refuse inputs far outside what the model was trained on: they drive activations to inf/NaN."""
    if normalization and x.ndim == 4 and x.shape[1] == len(normalization["mean"]):
        m = np.asarray(normalization["mean"], np.float32)
        sd = np.asarray(normalization["std"], np.float32)
        lo, hi = (0 - m) / sd, (1 - m) / sd
        w = (hi - lo) * RANGE_SLACK
        lo, hi = lo - w, hi + w
        xmin, xmax = x.min(axis=(0, 2, 3)), x.max(axis=(0, 2, 3))
        if (xmin < lo).any() or (xmax > hi).any():
            c = int(np.flatnonzero((xmin < lo) | (xmax > hi))[0])
            raise BadRequest(
                f"input channel {c} holds values in [{xmin[c]:.4g}, {xmax[c]:.4g}], outside [{lo[c]:.4g}, "
                f"{hi[c]:.4g}]: FP32 input must be images normalised as (x / 255 - mean) / std with the "
                "checkpoint's mean and std (or send UINT8 pixels)"
            )
        return
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > UNNORMALISED_LIMIT:
        raise BadRequest(
            f"input holds values up to {peak:.4g} in magnitude (> {UNNORMALISED_LIMIT:g}); send normalised input"
        )


__all__ = ["VERSION", "BadRequest", "DataPlane", "NotFound", "OipError", "Unavailable"]
