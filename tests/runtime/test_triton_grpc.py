"""Unmodified ``tritonclient.grpc`` against a real 4-node cluster: Triton's extensions (model config,
statistics, repository index, classification), versions, typed ``contents``, and a bidirectional stream
of 100 requests whose answers are those of offline evaluation."""

from __future__ import annotations

import queue

import numpy as np
import pytest

from distree.checkpoint import read_sidecar
from distree.runtime.client import build_request, make_channel
from distree.runtime.kserve import SERVICE
from distree.runtime.protos import kserve_v2_pb2 as pb

pytestmark = pytest.mark.xdist_group("runtime-main")


@pytest.fixture
def client(main_cluster):
    import tritonclient.grpc as tc

    c = tc.InferenceServerClient(url=main_cluster.nodes[0].address)
    yield c
    c.close()


def test_metadata_config_index_and_versions(rt, main_cluster, client):
    from tritonclient.utils import InferenceServerException

    c = client
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("distree", "1")
    assert not c.is_model_ready("distree", "2")
    assert "model_configuration" in c.get_server_metadata().extensions
    assert c.get_model_metadata("distree", "1").versions == ["1"]
    for call in (c.get_model_metadata, c.get_model_config, c.get_inference_statistics):
        for name, version in (("distree", "2"), ("nope", "")):
            with pytest.raises(InferenceServerException) as ei:
                call(name, version)
            assert ei.value.status() == "StatusCode.NOT_FOUND", (call, name, version)
    cfg = c.get_model_config("distree").config
    assert cfg.name == "distree" and cfg.max_batch_size == main_cluster.max_request_batch
    assert cfg.input[0].name == "INPUT" and list(cfg.input[0].dims) == [1, 8, 8]
    assert cfg.output[0].name == "PROBS" and list(cfg.output[0].dims) == [rt.trace.num_classes]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert cfg.parameters["num_nodes"].string_value == "4"
    as_json = c.get_model_config("distree", as_json=True)["config"]
    assert as_json["input"][0]["data_type"] == "TYPE_FP32"
    index = c.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("distree", "1", "READY")]


def test_infer_classification_and_statistics(rt, main_cluster, client):
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    c = client
    exit_off, pred_off = rt.offline()
    classes = read_sidecar(rt.checkpoint)["classes"]
    before = c.get_inference_statistics("distree").model_stats[0]
    inp = tc.InferInput("INPUT", [5, 1, 8, 8], "UINT8")
    inp.set_data_from_numpy(rt.images[:5])
    outs = [tc.InferRequestedOutput("EXIT_NODE"), tc.InferRequestedOutput("PROBS", class_count=3)]
    r = c.infer("distree", [inp], outputs=outs, model_version="1", request_id="c1")
    np.testing.assert_array_equal(r.as_numpy("EXIT_NODE") - 1, exit_off[:5])
    top = r.as_numpy("PROBS")
    assert top.shape == (5, 3)
    for row, pred in zip(top, pred_off[:5], strict=True):
        scores = [float(v.split(b":")[0]) for v in row]
        assert scores == sorted(scores, reverse=True)
        _, idx, label = row[0].decode().split(":")
        assert int(idx) == pred and label == classes[pred]
    # typed contents instead of raw bytes (the protocol's JSON-like tensor form over gRPC)
    req = pb.ModelInferRequest(model_name="distree", id="typed")
    req.inputs.add(name="INPUT", datatype="UINT8", shape=[2, 1, 8, 8])
    req.inputs[0].contents.uint_contents.extend(rt.images[5:7].ravel().tolist())
    with make_channel(main_cluster.nodes[0].address) as ch:
        infer = ch.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        resp = infer(req, timeout=10)
        raw = infer(build_request(rt.images[5:7]), timeout=10)
    assert resp.id == "typed" and resp.raw_output_contents[1] == raw.raw_output_contents[1]  # EXIT_NODE
    with pytest.raises(InferenceServerException) as ei:
        c.infer("distree", [inp], outputs=[tc.InferRequestedOutput("EXIT_NODE", class_count=2)])
    assert ei.value.status() == "StatusCode.INVALID_ARGUMENT" and "classification applies to 'PROBS'" in str(ei.value)
    after = c.get_inference_statistics("distree", "1").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_count - before.inference_count == 9
    assert 1 <= after.execution_count - before.execution_count <= 3
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert {b.batch_size for b in after.batch_stats} >= {2, 5}


def test_stream_of_100_requests_matches_offline_evaluation(rt, main_cluster, client):
    import tritonclient.grpc as tc

    exit_off, pred_off = rt.offline()
    n = min(100, len(rt.images))
    assert n == 100, "the test split should have at least 100 images"
    got: queue.Queue = queue.Queue()
    before = client.get_inference_statistics("distree").model_stats[0].inference_stats
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        for i in range(n):
            inp = tc.InferInput("INPUT", [1, 1, 8, 8], "UINT8")
            inp.set_data_from_numpy(rt.images[i : i + 1])
            client.async_stream_infer("distree", [inp], request_id=str(i))
            if i == 50:  # a bad message in the middle gets its own error; the stream goes on
                client.async_stream_infer("distree", [inp], model_version="2", request_id="bad")
        results = [got.get(timeout=60) for _ in range(n + 1)]
    finally:
        client.stop_stream()
    errors = [e for r, e in results if e is not None]
    assert len(errors) == 1 and "no version '2'" in str(errors[0])
    answers = {r.get_response().id: r for r, e in results if e is None}
    assert sorted(answers, key=int) == [str(i) for i in range(n)]
    exits = np.array([int(answers[str(i)].as_numpy("EXIT_NODE")[0]) - 1 for i in range(n)])
    preds = np.array([int(answers[str(i)].as_numpy("PROBS")[0].argmax()) for i in range(n)])
    assert not any(bool(answers[str(i)].as_numpy("DEGRADED")[0]) for i in range(n))
    np.testing.assert_array_equal(exits, exit_off[:n])
    np.testing.assert_array_equal(preds, pred_off[:n])
    after = client.get_inference_statistics("distree").model_stats[0].inference_stats
    assert after.success.count - before.success.count == n
    assert after.fail.count == before.fail.count  # an unknown version is no request of this model version


def test_stream_survives_a_client_that_goes_away(rt, main_cluster):
    x = rt.images[:1]
    with make_channel(main_cluster.nodes[0].address) as ch:
        stream = ch.stream_stream(
            f"/{SERVICE}/ModelStreamInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        call = stream(iter([build_request(x, request_id=str(i)) for i in range(8)]), timeout=30)
        first = next(call)
        assert first.error_message == "" and first.infer_response.id in {str(i) for i in range(8)}
        call.cancel()  # the rest of the answers have nowhere to go
        with make_channel(main_cluster.nodes[0].address) as ch2:
            resp = ch2.unary_unary(
                f"/{SERVICE}/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )(build_request(x), timeout=10)
        assert len(resp.outputs) == 4
