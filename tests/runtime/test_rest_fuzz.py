"""The HTTP/REST handlers in process (a node-1 core with a fake successor, a real aiohttp server on
loopback, one per module): a hypothesis fuzz over the JSON body of inference requests. Whatever the
body, the answer is 200 with the outputs or 400/404/413 with a JSON error naming the problem, and the
next good request is answered."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _unit import CLASSES, TagBackend, Unit
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from distree.runtime.clock import ManualClock
from distree.runtime.core import NodeCore
from distree.runtime.dataplane import DataPlane
from distree.runtime.fake import FakeLink, answer_all
from distree.runtime.rest import RestServer

_PROBS = [0.5] + [0.5 / (CLASSES - 1)] * (CLASSES - 1)
GOOD = {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [1, 1, 8, 8], "data": [7] * 64}]}


class Http:
    """A loop of the test's own running one RestServer; ``post`` sends a body, returns (status, JSON)."""

    def __init__(self, unit: Unit) -> None:
        self.loop = asyncio.new_event_loop()
        clock = ManualClock()
        self.core = NodeCore(
            unit.spec("fuzz", max_message_bytes=64 << 10, max_request_batch=16),
            1,
            model=unit.model,
            sidecar={"normalization": {"mean": [0.5], "std": [0.25]}, "classes": [f"c{i}" for i in range(CLASSES)]},
            policy=unit.policy,
            backend=TagBackend(),
            link=FakeLink(lambda req: answer_all(req, exit_node=3, probs=_PROBS), from_node=1, clock=clock),
            clock=clock,
        )
        self.plane = DataPlane(self.core)
        self.plane.ready = True
        self.server = TestServer(RestServer(self.plane, self.core.spec).app())
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        await self.core.start()
        await self.server.start_server()
        self.session = ClientSession()

    def post(self, body: bytes, headers: dict[str, str] | None = None, path: str = "/v2/models/distree/infer"):
        async def go() -> tuple[int, Any]:
            async with self.session.post(self.server.make_url(path), data=body, headers=headers or {}) as r:
                data = await r.read()
                # a request may ask for binary outputs: then only the header's length of the body is JSON
                n = r.headers.get("Inference-Header-Content-Length")
                obj = json.loads(data[: int(n)] if n is not None else data)
                if n is not None:
                    sizes = [o["parameters"]["binary_data_size"] for o in obj["outputs"] if "data" not in o]
                    assert len(data) == int(n) + sum(sizes), (len(data), n, sizes)
                return r.status, obj

        return self.loop.run_until_complete(go())

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.server.close()
            await self.core.close()

        self.loop.run_until_complete(stop())
        self.loop.close()


@pytest.fixture(scope="module")
def http(unit: Unit) -> Iterator[Http]:
    h = Http(unit)
    try:
        yield h
    finally:
        h.close()


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-300, 300), st.floats(allow_nan=True), st.text(max_size=8))
_json = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
_data = st.one_of(
    st.lists(st.integers(-2, 260), min_size=60, max_size=68),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=62, max_size=66),
    st.lists(st.lists(st.integers(0, 255), min_size=8, max_size=8), min_size=7, max_size=9),
    _json,
)
_tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["INPUT", "INPUT", "IMAGE", ""]),
        "datatype": st.sampled_from(["UINT8", "FP32", "INT64", "BYTES", "fp32", ""]),
        "shape": st.one_of(st.just([1, 1, 8, 8]), st.lists(st.integers(-2, 9), max_size=5), _json),
    },
    optional={"data": _data, "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), _scalars)},
)
_output = st.fixed_dictionaries(
    {"name": st.sampled_from(["PROBS", "EXIT_NODE", "DEGRADED", "SCORE", "LOGITS"])},
    optional={
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data", "classification"]), st.one_of(_scalars, st.integers(-1, 12)), max_size=2
        )
    },
)
_valid = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.just("INPUT"),
            "datatype": st.just("UINT8"),
            "shape": st.just([1, 1, 8, 8]),
            "data": st.lists(st.integers(0, 255), min_size=64, max_size=64),
        }
    ),
    st.fixed_dictionaries(
        {
            "name": st.just("INPUT"),
            "datatype": st.just("FP32"),
            "shape": st.sampled_from([[1, 1, 8, 8], [2, 1, 8, 8]]),
            "data": st.lists(st.floats(-3, 3, width=32), min_size=64, max_size=64).map(lambda v: v * 2),
        }
    ),
)
_params = st.dictionaries(
    st.sampled_from(["timeout", "deadline_unix_us", "binary_data_output", "priority"]),
    st.one_of(_scalars, st.integers(-10, 10**9)),
    max_size=2,
)
#: near-valid requests (one well-formed input, fuzzed outputs and parameters), malformed ones, any JSON
_body = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.lists(_valid, min_size=1, max_size=1)},
        optional={"id": st.text(max_size=6), "outputs": st.lists(_output, max_size=3), "parameters": _params},
    ),
    st.fixed_dictionaries(
        {"inputs": st.lists(st.one_of(_tensor, _valid), min_size=0, max_size=2)},
        optional={
            "id": st.one_of(st.text(max_size=6), st.integers()),
            "outputs": st.one_of(st.lists(_output, max_size=3), _json),
            "parameters": _params,
        },
    ),
    _json,
)


def _check(status: int, obj: Any) -> None:
    if status == 200:
        assert obj["model_name"] == "distree" and obj["outputs"], obj
        for o in obj["outputs"]:
            assert ("data" in o) != ("binary_data_size" in o.get("parameters", {})), o
    else:
        assert status in (400, 404, 413), (status, obj)
        assert isinstance(obj["error"], str) and len(obj["error"]) > 10, obj


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_body, model=st.sampled_from(["distree", "distree", "distree", "other"]), raw=st.booleans())
def test_fuzz_json_body(http: Http, body: Any, model: str, raw: bool):
    text = json.dumps(body).encode()
    if raw:  # a byte that is not UTF-8 in the middle
        text = text[: len(text) // 2] + b"\xff" + text[len(text) // 2 :]
    status, obj = http.post(text, path=f"/v2/models/{model}/infer")
    event(f"HTTP {status}")
    _check(status, obj)
    if model == "other":
        assert status == 404 and "unknown model 'other'" in obj["error"]
    good = http.post(json.dumps(GOOD).encode())
    assert good[0] == 200 and len(good[1]["outputs"]) == 4


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    json_len=st.integers(-5, 400),
    sizes=st.one_of(st.just([64]), st.lists(st.integers(-3, 300), min_size=1, max_size=2)),
    extra=st.one_of(st.just(0), st.integers(-70, 70)),
)
def test_fuzz_binary_extension(http: Http, json_len: int, sizes: list[int], extra: int):
    inputs = [
        {"name": "INPUT", "datatype": "UINT8", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": s}}
        for s in sizes
    ]
    head = json.dumps({"inputs": inputs}).encode()
    binary = (np.arange(max(sum(max(s, 0) for s in sizes) + extra, 0)) % 251).astype(np.uint8).tobytes()
    length = len(head) if json_len % 3 else json_len
    status, obj = http.post(head + binary, {"Inference-Header-Content-Length": str(length)})
    event(f"HTTP {status}")
    _check(status, obj)
    valid = length == len(head) and sizes == [64] and extra == 0
    assert (status == 200) == valid, (status, obj)


def test_oversized_and_statistics_in_process(http: Http):
    status, obj = http.post(b"[" + b"0," * (40 << 10) + b"0]")
    assert status == 413 and "over the limit of 65536" in obj["error"]
    before = http.plane.stats.to_dict()
    assert http.post(json.dumps(GOOD).encode())[0] == 200
    assert http.post(b"{")[0] == 400
    after = http.plane.stats.to_dict()
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
