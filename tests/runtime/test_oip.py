"""The transport-independent data plane and its codecs: the binary tensor extension read back by
tritonclient's own decoder, classification strings, statistics, and the wire compatibility of the
Triton extension messages with tritonclient's protos. No sockets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _unit import Unit, run
from google.protobuf import json_format

from distree.runtime import oip
from distree.runtime.dataplane import DataPlane
from distree.runtime.kserve import to_request, to_response
from distree.runtime.oip import InferResponse, OutputTensor, classify
from distree.runtime.protos import kserve_v2_pb2 as pb
from distree.runtime.rest_codec import HEADER_LENGTH, decode_request, encode_response
from distree.runtime.stats import ModelStats, TritonCollector


def _response() -> InferResponse:
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], np.float32)
    return InferResponse(
        "distree",
        "1",
        "r9",
        [
            OutputTensor("PROBS", "FP32", [2, 3], array=probs, parameters={"binary_data": True}),
            OutputTensor("EXIT_NODE", "INT32", [2], array=np.array([1, 3], np.int32)),
            OutputTensor("DEGRADED", "BOOL", [2], array=np.array([False, True]), parameters={"binary_data": True}),
            OutputTensor(
                "TOP", "BYTES", [2, 2], strings=classify(probs, 2, ["a", "b", "c"]), parameters={"binary_data": True}
            ),
        ],
        {"degraded_reasons": ",deadline"},
    )


def test_binary_response_reads_back_with_tritonclient():
    from tritonclient.http import InferResult

    body, head = encode_response(_response(), binary_default=False)
    assert head is not None and json.loads(body[:head])["outputs"][1]["data"] == [1, 3]
    r = InferResult.from_response_body(body, header_length=head)
    np.testing.assert_array_equal(r.as_numpy("PROBS"), _response().outputs[0].array)
    np.testing.assert_array_equal(r.as_numpy("EXIT_NODE"), [1, 3])
    np.testing.assert_array_equal(r.as_numpy("DEGRADED"), [False, True])
    assert r.as_numpy("TOP").tolist() == [[b"0.700000:1:b", b"0.200000:2:c"], [b"0.600000:0:a", b"0.300000:1:b"]]
    assert r.get_response()["parameters"] == {"degraded_reasons": ",deadline"} and r.get_response()["id"] == "r9"
    body, head = encode_response(InferResponse("m", "1", "", [_response().outputs[1]]), binary_default=False)
    assert head is None and json.loads(body)["outputs"][0]["data"] == [1, 3]


def test_classification_strings():
    p = np.array([[0.25, 0.5, 0.25]], np.float32)
    assert classify(p, 3, ["x", "y", "z"]) == [b"0.500000:1:y", b"0.250000:0:x", b"0.250000:2:z"]  # ties: by index
    assert classify(p, 1, []) == [b"0.500000:1"]  # no labels: Triton's "score:index"


def test_binary_request_with_two_inputs_and_errors():
    a, b = np.arange(4, dtype=np.float32), np.arange(3, dtype=np.uint8)
    head = {
        "id": "q",
        "parameters": {"timeout": 5},
        "inputs": [
            {"name": "A", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
            {"name": "B", "datatype": "UINT8", "shape": [3], "parameters": {"binary_data_size": 3}},
            {"name": "C", "datatype": "INT32", "shape": [2], "data": [1, 2]},
        ],
        "outputs": [{"name": "PROBS"}, {"name": "SCORE", "parameters": {"binary_data": True}}],
    }
    j = json.dumps(head).encode()
    req = decode_request(j + a.tobytes() + b.tobytes(), f" {len(j)}", "distree", "")
    assert [t.data for t in req.inputs] == [a.tobytes(), b.tobytes(), [1, 2]]
    assert req.id == "q" and req.parameters == {"timeout": 5}
    assert [o.parameters["binary_data"] for o in req.outputs] == [False, True]
    cases = {
        "abc": (b"{", None),
        "past the end": (j + a.tobytes(), str(len(j))),
        "add up to 19": (j + a.tobytes() + b.tobytes() + b"x", str(len(j))),
        HEADER_LENGTH: (j, "-1"),
    }
    for needle, (body, hl) in cases.items():
        with pytest.raises(oip.BadRequest, match="not valid JSON" if needle == "abc" else needle):
            decode_request(body, hl, "distree", "")


def test_statistics_and_triton_metric_names():
    s = ModelStats("m", "1", executions=lambda: 2)
    s.succeeded(4, total=0.003, queue=0.001, inp=0.0001, infer=0.0015, out=0.0002)
    s.succeeded(1, total=0.002, queue=0.0, inp=0.0001, infer=0.001, out=0.0001)
    s.failed(0.0005)
    d = s.to_dict()
    assert d["inference_count"] == 5 and d["execution_count"] == 2
    assert d["inference_stats"]["success"] == {"count": 2, "ns": 5_000_000}
    assert d["inference_stats"]["fail"] == {"count": 1, "ns": 500_000}
    assert [b["batch_size"] for b in d["batch_stats"]] == [1, 4]
    got = {m.name: m.samples[0].value for m in TritonCollector(lambda: [s]).collect()}
    assert got["nv_inference_request_success"] == 2 and got["nv_inference_request_failure"] == 1
    assert got["nv_inference_count"] == 5 and got["nv_inference_exec_count"] == 2
    assert got["nv_inference_request_duration_us"] == 5500 and got["nv_inference_queue_duration_us"] == 1000
    assert got["nv_inference_compute_infer_duration_us"] == 2500


def test_extension_messages_are_wire_compatible_with_tritonclient(unit: Unit):
    from tritonclient.grpc import service_pb2 as tpb

    core = unit.core(1, spec=unit.spec("oip", batching={"max_batch_size": 4, "max_queue_delay_ms": 1.5}))
    plane = DataPlane(core)
    plane.ready = True
    cfg = pb.ModelConfigResponse(config=json_format.ParseDict(plane.model_config("distree", "1"), pb.ModelConfig()))
    theirs = tpb.ModelConfigResponse.FromString(cfg.SerializeToString())
    assert json_format.MessageToDict(theirs, preserving_proto_field_name=True) == json_format.MessageToDict(
        cfg, preserving_proto_field_name=True
    )
    assert theirs.config.dynamic_batching.max_queue_delay_microseconds == 1500
    assert theirs.config.input[0].data_type == 11  # TYPE_FP32 in Triton's enum
    st = json_format.ParseDict(plane.statistics(), pb.ModelStatisticsResponse())
    assert tpb.ModelStatisticsResponse.FromString(st.SerializeToString()).model_stats[0].name == "distree"
    idx = json_format.ParseDict({"models": plane.repository_index()}, pb.RepositoryIndexResponse())
    assert tpb.RepositoryIndexResponse.FromString(idx.SerializeToString()).models[0].state == "READY"
    with pytest.raises(oip.NotFound, match="no version '3'"):
        plane.model_config("distree", "3")
    with pytest.raises(oip.NotFound, match="unknown model"):
        plane.statistics("x")


def test_grpc_request_and_response_translation(unit: Unit):
    core = unit.core(1)
    plane = DataPlane(core)
    plane.ready = True
    r = pb.ModelInferRequest(model_name="distree", model_version="1", id="g")
    r.inputs.add(name="INPUT", datatype="FP32", shape=[1, 1, 8, 8])
    x = np.zeros((1, 1, 8, 8), np.float32)
    x.flat[0] = 1.0  # a confident row: node 1 answers it
    r.raw_input_contents.append(x.tobytes())
    r.parameters["timeout"].int64_param = 10**6
    r.outputs.add(name="EXIT_NODE")
    req = to_request(r)
    assert req.parameters == {"timeout": 10**6} and req.inputs[0].data == x.tobytes()
    resp = to_response(run(plane.infer(req, arrival=core.clock.monotonic())))
    assert resp.id == "g" and [o.name for o in resp.outputs] == ["EXIT_NODE"]
    assert np.frombuffer(resp.raw_output_contents[0], np.int32).tolist() == [1]
    assert plane.stats.to_dict()["inference_stats"]["success"]["count"] == 1
    plane.ready = False
    with pytest.raises(oip.Unavailable):
        run(plane.infer(req, arrival=core.clock.monotonic()))
    r.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(oip.BadRequest, match="not both"):
        to_request(r)
