"""Inference requests and responses of the Open Inference Protocol's HTTP/REST form, with Triton's
binary tensor data extension.

A request body is a JSON object (``id``, ``parameters``, ``inputs``, ``outputs``), optionally
followed by binary tensor data: the header ``Inference-Header-Content-Length`` gives the JSON's
length, and each input with the parameter ``binary_data_size`` takes that many bytes of what follows,
in input order. An output is sent as binary data when its parameter ``binary_data`` is true (default:
the request parameter ``binary_data_output``, else JSON); the response then carries
``Inference-Header-Content-Length`` too. Every malformed field is a :class:`BadRequest` naming it.
"""

from __future__ import annotations

import json
from typing import Any

from .oip import BadRequest, InferRequest, InferResponse, InputTensor, RequestedOutput

HEADER_LENGTH = "Inference-Header-Content-Length"
_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
_INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS = ("name", "parameters")


def _keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    extra = [k for k in obj if k not in allowed]
    if extra:
        raise BadRequest(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(allowed)})")


def _object(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise BadRequest(f"{where} must be a JSON object, got {type(v).__name__}")
    return v


def _str(obj: dict, key: str, where: str, *, required: bool = True) -> str:
    v = obj.get(key, None if required else "")
    if not isinstance(v, str):
        raise BadRequest(f"{where}: {key!r} must be a string, got {'nothing' if v is None else repr(v)}")
    return v


def _parameters(obj: dict, where: str) -> dict[str, Any]:
    p = _object(obj.get("parameters", {}), f"{where} 'parameters'")
    for k, v in p.items():
        if not isinstance(v, bool | int | float | str):
            raise BadRequest(f"{where}: parameter {k!r} must be a boolean, number or string, got {v!r}")
    return p


def decode_request(body: bytes, header_length: str | None, model: str, version: str) -> InferRequest:
    """An inference request from an HTTP body (and the binary extension's header, if any)."""
    binary = memoryview(b"")
    if header_length is not None:
        header_length = header_length.strip()
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} is {header_length!r}; it must be the length of the JSON part of the body "
                f"(0..{len(body)} bytes)"
            )
        n = int(header_length)
        binary = memoryview(body)[n:]
        body = body[:n]
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e}); send an inference request object") from None
    obj = _object(obj, "the request body")
    _keys(obj, _REQUEST_KEYS, "inference request")
    params = _parameters(obj, "inference request")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("inference request: 'inputs' must be a non-empty list of input tensors")
    inputs: list[InputTensor] = []
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"input #{i + 1}"
        t = _object(t, where)
        _keys(t, _INPUT_KEYS, where)
        name = _str(t, "name", where)
        where = f"input {name!r}"
        datatype = _str(t, "datatype", where)
        shape = t.get("shape")
        if not isinstance(shape, list) or any(isinstance(s, bool) or not isinstance(s, int) for s in shape):
            raise BadRequest(f"{where}: 'shape' must be a list of integers, got {shape!r}")
        tp = _parameters(t, where)
        size = tp.get("binary_data_size")
        data: bytes | list | None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(f"{where}: 'binary_data_size' must be an integer >= 0, got {size!r}")
            if "data" in t:
                raise BadRequest(f"{where}: give either 'data' or the parameter 'binary_data_size', not both")
            if offset + size > len(binary):
                raise BadRequest(
                    f"{where}: binary_data_size {size} runs past the end of the binary data "
                    f"({len(binary) - offset} bytes left after the JSON part; "
                    f"{HEADER_LENGTH} must give the JSON length)"
                )
            data = bytes(binary[offset : offset + size])
            offset += size
        elif "data" in t:
            data = t["data"]
            if not isinstance(data, list):
                raise BadRequest(f"{where}: 'data' must be a list of values, got {type(data).__name__}")
        else:
            data = None
        inputs.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise BadRequest(
            f"the body carries {len(binary)} bytes of binary data but the inputs' binary_data_size add up to {offset}"
        )
    raw_outputs = obj.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise BadRequest("inference request: 'outputs' must be a list of requested outputs")
    outputs = []
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise BadRequest(f"parameter 'binary_data_output' must be true or false, got {default_binary!r}")
    for i, o in enumerate(raw_outputs):
        o = _object(o, f"output #{i + 1}")
        _keys(o, _OUTPUT_KEYS, f"output #{i + 1}")
        name = _str(o, "name", f"output #{i + 1}")
        op = dict(_parameters(o, f"output {name!r}"))
        b = op.setdefault("binary_data", default_binary)
        if not isinstance(b, bool):
            raise BadRequest(f"output {name!r}: parameter 'binary_data' must be true or false, got {b!r}")
        outputs.append(RequestedOutput(name, op))
    return InferRequest(model, version, _str(obj, "id", "inference request", required=False), inputs, outputs, params)


def encode_response(resp: InferResponse, binary_default: bool) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when binary tensor data follows it."""
    outputs = []
    blobs: list[bytes] = []
    for o in resp.outputs:
        d: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        if o.parameters.get("binary_data", binary_default):
            raw = o.raw()
            d["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            d["data"] = o.values()
        outputs.append(d)
    obj: dict[str, Any] = {"model_name": resp.model, "model_version": resp.version}
    if resp.id:
        obj["id"] = resp.id
    if resp.parameters:
        obj["parameters"] = resp.parameters
    obj["outputs"] = outputs
    head = json.dumps(obj, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
