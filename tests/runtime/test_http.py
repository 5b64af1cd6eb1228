"""The Open Inference Protocol over HTTP/REST on a real 4-node cluster: unmodified ``tritonclient.http``,
the curl and ``requests`` examples of docs/runtime.md, and bad input (right code, clear message, the
node keeps answering)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from distree.checkpoint import read_sidecar
from distree.runtime.rest import http_url

pytestmark = pytest.mark.xdist_group("runtime-main")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "runtime.md"


def _url(spec) -> str:
    return http_url(spec)


def _stats(url: str) -> dict:
    return requests.get(f"{url}/v2/models/distree/stats", timeout=10).json()["model_stats"][0]


def _good(rt) -> dict:
    x = rt.images[:1]
    return {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def test_tritonclient_http(rt, main_cluster):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    exit_off, pred_off = rt.offline()
    classes = read_sidecar(rt.checkpoint)["classes"]
    url = _url(main_cluster).removeprefix("http://")
    c = th.InferenceServerClient(url=url)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("distree") and c.is_model_ready("distree", "1")
        assert not c.is_model_ready("distree", "2") and not c.is_model_ready("nope")
        md = c.get_server_metadata()
        assert md["name"] == "distree" and {"classification", "statistics", "binary_tensor_data"} <= set(
            md["extensions"]
        )
        mm = c.get_model_metadata("distree", "1")
        assert mm["versions"] == ["1"] and mm["inputs"][0]["shape"] == [-1, 1, 8, 8]
        for name, version in (("distree", "2"), ("nope", "")):
            with pytest.raises(InferenceServerException) as ei:
                c.get_model_metadata(name, version)
            assert ei.value.status() == "404"
        cfg = c.get_model_config("distree")
        assert cfg["max_batch_size"] == main_cluster.max_request_batch
        assert cfg["input"][0] == {
            "name": "INPUT",
            "data_type": "TYPE_FP32",
            "format": "FORMAT_NCHW",
            "dims": [1, 8, 8],
        }
        assert [o["name"] for o in cfg["output"]] == ["PROBS", "EXIT_NODE", "DEGRADED", "SCORE"]
        assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000  # the spec's [batching]
        assert c.get_model_repository_index() == [{"name": "distree", "version": "1", "state": "READY", "reason": ""}]

        before = c.get_inference_statistics("distree")["model_stats"][0]
        n_rows = 0
        # binary tensors in and out, all outputs (the client asks for binary_data_output)
        x = rt.images[:6]
        inp = th.InferInput("INPUT", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x)
        r = c.infer("distree", [inp], request_id="b1", timeout=5_000_000)
        np.testing.assert_array_equal(r.as_numpy("EXIT_NODE") - 1, exit_off[:6])
        np.testing.assert_array_equal(r.as_numpy("PROBS").argmax(-1), pred_off[:6])
        assert r.get_response()["id"] == "b1" and r.as_numpy("DEGRADED").dtype == np.bool_
        n_rows += 6
        # JSON tensors in (FP32, normalised), requested outputs: one binary, one JSON, one classification
        norm = read_sidecar(rt.checkpoint)["normalization"]
        m = np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
        xf = ((rt.images[6:10].astype(np.float32) / np.float32(255.0) - m) / s).astype(np.float32)
        inp = th.InferInput("INPUT", list(xf.shape), "FP32")
        inp.set_data_from_numpy(xf, binary_data=False)
        outs = [
            th.InferRequestedOutput("EXIT_NODE", binary_data=True),
            th.InferRequestedOutput("SCORE", binary_data=False),
            th.InferRequestedOutput("PROBS", binary_data=False, class_count=3),
        ]
        r = c.infer("distree", [inp], outputs=outs)
        np.testing.assert_array_equal(r.as_numpy("EXIT_NODE") - 1, exit_off[6:10])
        assert r.as_numpy("SCORE").shape == (4,)
        top = r.as_numpy("PROBS")
        assert top.shape == (4, 3)
        for row, pred in zip(top, pred_off[6:10], strict=True):
            score, idx, label = (row[0].decode() if isinstance(row[0], bytes) else row[0]).split(":")
            assert int(idx) == pred and label == classes[pred] and 0 < float(score) <= 1
        n_rows += 4
        # classification as binary BYTES
        inp = th.InferInput("INPUT", [2, 1, 8, 8], "UINT8")
        inp.set_data_from_numpy(rt.images[10:12])
        r = c.infer("distree", [inp], outputs=[th.InferRequestedOutput("PROBS", class_count=2)])
        assert [int(v.split(b":")[1]) for v in r.as_numpy("PROBS")[:, 0]] == pred_off[10:12].tolist()
        n_rows += 2
        with pytest.raises(InferenceServerException) as ei:  # a failed request is counted as one
            c.infer("distree", [inp], outputs=[th.InferRequestedOutput("LOGITS")])
        assert ei.value.status() == "400" and "unknown output 'LOGITS'" in ei.value.message()
        after = c.get_inference_statistics("distree", "1")["model_stats"][0]
    finally:
        c.close()

    def d(*keys: str) -> int:
        a, b = after, before
        for k in keys:
            a, b = a[k], b[k]
        return a - b

    assert d("inference_stats", "success", "count") == 3
    assert d("inference_stats", "fail", "count") == 1
    assert d("inference_count") == n_rows
    assert 1 <= d("execution_count") <= 3
    assert d("inference_stats", "queue", "count") == 3 and d("inference_stats", "compute_infer", "count") == 3
    assert d("inference_stats", "success", "ns") >= d("inference_stats", "compute_infer", "ns") > 0
    assert {b["batch_size"] for b in after["batch_stats"]} >= {2, 4, 6}
    assert after["last_inference"] > before["last_inference"] >= 0


def _doc_blocks(lang: str, needle: str) -> list[str]:
    text = DOCS.read_text()
    return [b for b in re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S) if needle in b]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_examples_of_the_docs(rt, main_cluster, tmp_path):
    blocks = _doc_blocks("bash", "curl ")
    assert blocks, "docs/runtime.md should have curl examples"
    script = "\n".join(blocks).replace("localhost:8000", _url(main_cluster).removeprefix("http://"))
    assert "/infer" in script and "/config" in script and "/stats" in script and "/repository/index" in script
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    for expect in ('"live":true', '"ready":true', '"extensions"', '"max_batch_size"', '"model_stats"', '"READY"'):
        assert expect in out, (expect, out)
    assert '"name":"EXIT_NODE"' in out and "Inference-Header-Content-Length" in out
    assert re.search(r'"data":\["[0-9.]+:\d+:', out), out  # the classification example
    assert '"error"' in out  # the example of an error object
    answer = (tmp_path / "answer.bin").read_bytes()  # the binary example writes the raw answer
    assert b"binary_data_size" in answer


def test_python_requests_example_of_the_docs(rt, main_cluster, tmp_path):
    (block,) = _doc_blocks("python", "import requests")
    code = block.replace("localhost:8000", _url(main_cluster).removeprefix("http://"))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "exit node" in run.stdout, run.stdout


def _post(url: str, body: bytes | str, headers: dict | None = None, path: str = "/v2/models/distree/infer"):
    return requests.post(url + path, data=body, headers=headers or {}, timeout=20)


def test_bad_http_input_gets_the_right_code_and_message(rt, main_cluster):
    url = _url(main_cluster)
    good = _good(rt)
    x = rt.images[:2]
    head = {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [2, 1, 8, 8], "parameters": {}}]}

    def binary(size: int, data: bytes) -> tuple[bytes, dict]:
        h = json.loads(json.dumps(head))
        h["inputs"][0]["parameters"]["binary_data_size"] = size
        j = json.dumps(h).encode()
        return j + data, {"Inference-Header-Content-Length": str(len(j))}

    def with_input(**kw) -> str:
        t = {**good["inputs"][0], **kw}
        return json.dumps({"inputs": [t]})

    cases = {
        "invalid JSON": ("{inputs: [", {}, 400, "not valid JSON"),
        "not an object": ("[1, 2]", {}, 400, "must be a JSON object"),
        "no inputs": ("{}", {}, 400, "'inputs' must be a non-empty list"),
        "unknown key": (json.dumps({**good, "input": []}), {}, 400, "unknown key 'input'"),
        "wrong datatype": (with_input(datatype="INT64"), {}, 400, "datatype 'INT64' is not supported"),
        "wrong shape": (with_input(shape=[1, 3, 8, 8]), {}, 400, "does not match the model's [B, 1, 8, 8]"),
        "shape not integers": (with_input(shape=[1, "a"]), {}, 400, "'shape' must be a list of integers"),
        "value count": (with_input(data=[1, 2, 3]), {}, 400, "holds 3 values for shape [1, 1, 8, 8]"),
        "strings as pixels": (with_input(data=["a"] * 64), {}, 400, "must be integers in 0..255"),
        "pixel out of range": (with_input(data=[256] * 64), {}, 400, "0..255"),
        "bad timeout": (json.dumps({**good, "parameters": {"timeout": "soon"}}), {}, 400, "parameter 'timeout'"),
        "unknown output": (json.dumps({**good, "outputs": [{"name": "X"}]}), {}, 400, "unknown output 'X'"),
        "byte count mismatch": (*binary(128, x.tobytes()[:100]), 400, "binary_data_size 128 runs past the end"),
        "extra binary bytes": (*binary(128, x.tobytes() + b"\0" * 5), 400, "add up to 128"),
        "truncated tensor": (*binary(100, x.tobytes()[:100]), 400, "truncated: 100 bytes for shape [2, 1, 8, 8]"),
        "header length too big": (json.dumps(good), {"Inference-Header-Content-Length": "99999"}, 400, "Inference"),
        "oversized body": (b"{" + b" " * (2 << 20) + b"}", {}, 413, "over the limit of 1048576"),
    }
    for name, (body, headers, code, needle) in cases.items():
        r = _post(url, body, headers)
        assert r.status_code == code, (name, r.status_code, r.text)
        assert needle in r.json()["error"], (name, r.json())
        ok = _post(url, json.dumps(good))  # the node keeps answering
        assert ok.status_code == 200 and len(ok.json()["outputs"]) == 4, name
    for path, needle in (
        ("/v2/models/resnet/infer", "unknown model 'resnet'"),
        ("/v2/models/distree/versions/2/infer", "no version '2'"),
        ("/v2/models/distree/versions/2", "no version '2'"),
        ("/v2/models/resnet/config", "unknown model"),
        ("/v2/models/distree/versions/7/stats", "no version '7'"),
        ("/v2/nothing/here", "no endpoint"),
    ):
        r = _post(url, json.dumps(good), path=path) if path.endswith("infer") else requests.get(url + path, timeout=10)
        assert r.status_code == 404 and needle in r.json()["error"], (path, r.text)
    r = requests.get(url + "/v2/models/distree/infer", timeout=10)
    assert r.status_code == 405 and "does not take GET" in r.json()["error"]
    assert requests.get(url + "/v2/health/ready", timeout=10).status_code == 200


def test_triton_named_metrics_match_the_statistics(rt, main_cluster):
    from prometheus_client.parser import text_string_to_metric_families

    url = _url(main_cluster)
    assert _post(url, json.dumps(_good(rt))).status_code == 200
    st = _stats(url)
    port = main_cluster.nodes[0].metrics_port
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    got = {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("nv_") and s.labels == {"model": "distree", "version": "1"}
    }
    inf = st["inference_stats"]
    assert got["nv_inference_request_success"] == inf["success"]["count"] > 0
    assert got["nv_inference_request_failure"] == inf["fail"]["count"]
    assert got["nv_inference_count"] == st["inference_count"]
    assert got["nv_inference_exec_count"] == st["execution_count"]
    assert got["nv_inference_request_duration_us"] == (inf["success"]["ns"] + inf["fail"]["ns"]) // 1000
    assert got["nv_inference_queue_duration_us"] == inf["queue"]["ns"] // 1000
    assert got["nv_inference_compute_infer_duration_us"] == inf["compute_infer"]["ns"] // 1000
    assert "# TYPE nv_inference_count untyped" in text and "distree_requests_total" in text
