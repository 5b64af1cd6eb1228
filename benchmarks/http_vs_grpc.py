"""HTTP/REST against gRPC: latency per request of the same 4-node loopback cluster over both transports.

One cluster (untrained weights: timing does not depend on them; last-exit policy, so every request
runs the whole chain; batch 1; 1 torch thread per node) serves node 1's Open Inference Protocol over
gRPC and HTTP/REST at once. Sequential requests, interleaved in blocks of 10 so that load from other
programs affects every client alike, through:

- ``grpc``: a grpc channel and ``ModelInfer`` (raw tensor bytes), the baseline;
- ``http binary``: a keep-alive ``requests.Session``, binary tensor data extension in and out;
- ``http json``: the same session, tensors as JSON in and out;
- ``tritonclient.grpc`` / ``tritonclient.http`` (binary tensors): the standard clients, whose own
  Python overhead is in their numbers.

Prints the median and p90 per client and each median's ratio to the ``grpc`` one, and the extra
milliseconds per request, from one run.

    .venv/bin/python benchmarks/http_vs_grpc.py [--model small-cnn] [--requests 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests
import torch

from distree.checkpoint import save_checkpoint
from distree.models import create_model
from distree.policies import create_policy
from distree.runtime import LocalCluster, load_spec
from distree.runtime.client import build_request, make_channel
from distree.runtime.cluster import free_ports
from distree.runtime.kserve import SERVICE
from distree.runtime.protos import kserve_v2_pb2 as pb
from distree.runtime.rest import http_url
from distree.runtime.spec_toml import spec_toml

Call = Callable[[], object]


def make_spec(model_name: str, tmp: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(model_name, num_nodes=4, num_classes=10)
    c = model.input_shape[0]
    ck = save_checkpoint(
        model,
        tmp / model_name,
        classes=[str(i) for i in range(10)],
        normalization={"mean": [0.5] * c, "std": [0.25] * c},
    )
    pol = create_policy("last-exit", 4).save(tmp / "last-exit.json")
    *ports, http_port = free_ports(5)
    spec = tmp / f"{model_name}.toml"
    spec.write_text(spec_toml(ck, pol, [{"address": f"127.0.0.1:{p}"} for p in ports], threads=1, http_port=http_port))
    return spec


def clients(spec_path: Path, x: np.ndarray) -> tuple[dict[str, Call], Callable[[], None]]:
    """The clients, each a call that sends one request and checks its answer; and a closer."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    spec = load_spec(spec_path)
    addr, url = spec.nodes[0].address, http_url(spec)
    ch = make_channel(addr)
    infer = ch.unary_unary(
        f"/{SERVICE}/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    session = requests.Session()
    infer_url = f"{url}/v2/models/{spec.model_name}/infer"
    tensor = {"name": "INPUT", "datatype": "UINT8", "shape": list(x.shape)}
    head = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(head).encode()
    binary_body, binary_headers = head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}
    binary_headers["Content-Type"] = "application/octet-stream"
    json_body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    json_headers = {"Content-Type": "application/json"}
    req = build_request(x, model_name=spec.model_name)
    tgc, thc = tg.InferenceServerClient(addr), th.InferenceServerClient(url.removeprefix("http://"))
    tg_in, th_in = tg.InferInput("INPUT", list(x.shape), "UINT8"), th.InferInput("INPUT", list(x.shape), "UINT8")
    tg_in.set_data_from_numpy(x)
    th_in.set_data_from_numpy(x)

    def grpc_call() -> object:
        return infer(req, timeout=30)

    def http_binary() -> object:
        r = session.post(infer_url, data=binary_body, headers=binary_headers, timeout=30)
        assert r.status_code == 200, r.text
        return r

    def http_json() -> object:
        r = session.post(infer_url, data=json_body, headers=json_headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    calls: dict[str, Call] = {
        "grpc": grpc_call,
        "http binary": http_binary,
        "http json": http_json,
        "tritonclient.grpc": lambda: tgc.infer(spec.model_name, [tg_in]),
        "tritonclient.http": lambda: thc.infer(spec.model_name, [th_in]),
    }

    def close() -> None:
        ch.close()
        session.close()
        tgc.close()
        thc.close()

    return calls, close


def measure(calls: dict[str, Call], n: int, block: int = 10) -> dict[str, np.ndarray]:
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(max(n // block, 1)):
        for name, call in calls.items():
            for _ in range(block):
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="small-cnn", help="model of the untrained checkpoint (small-cnn, wrn-16-2, ...)")
    ap.add_argument("--requests", type=int, default=300, help="timed requests per client")
    ap.add_argument("--quick", action="store_true", help="60 requests per client (a smoke run)")
    args = ap.parse_args()
    n = 60 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = make_spec(args.model, Path(tmp))
        spec = load_spec(spec_path)
        model_shape = create_model(args.model, num_nodes=4, num_classes=10).input_shape
        x = np.random.default_rng(0).integers(0, 256, (1, *model_shape), dtype=np.uint8)
        with LocalCluster(spec, log_dir=Path(tmp) / "logs") as cluster:
            cluster.start(timeout_s=180)
            calls, close = clients(spec_path, x)
            try:
                measure(calls, 20)  # warm-up: connections, caches, the nodes' estimates
                t = measure(calls, n)
            finally:
                close()
    base = float(np.median(t["grpc"]))
    print(f"setup: 4 node processes on loopback, {args.model} (untrained), last-exit, batch 1, {n} requests per client")
    print(f"{'client':<20}{'median ms':>11}{'p90 ms':>9}{'ratio to grpc':>15}{'extra ms':>10}")
    for name, v in t.items():
        med = float(np.median(v))
        p90 = float(np.quantile(v, 0.9))
        print(f"{name:<20}{med * 1e3:>11.2f}{p90 * 1e3:>9.2f}{med / base:>15.2f}{(med - base) * 1e3:>10.2f}")
    hb = float(np.median(t["http binary"]))
    print(f"HTTP/gRPC latency ratio (binary tensors, lean clients): {hb / base:.2f}")


if __name__ == "__main__":
    main()
