"""Overhead of the distributed runtime, measured in one run against its own floors.

Prints, for WRN-16-2 (transport dominates) and a larger WRN (compute dominates), 4 nodes on loopback,
last-exit policy (every request runs every node), batch 1:

1. per hop: node-to-node forward time (round trip of a forward on the node stream minus the callee's
   compute and downstream time, so it holds both ends' serialisation, queueing and the answer's way back) divided
   by a bare grpc.aio unary call carrying the same bytes between two processes (the transport floor),
   with the runtime's channel options and a reply of the size of a one-row Forward answer. Two
   floors: the callee replies at once ("idle"), or the callee first runs the same segment + exit as
   the node it stands for and the client subtracts that compute time, exactly as the forward time
   subtracts the node's ("compute-matched"; a process that has just computed answers more slowly,
   which no runtime can avoid). Target <= 1.2 against the compute-matched floor.
2. end to end: client latency divided by (in-process sequential execution of the same segments and
   exits + the sum of the compute-matched floors of the chain's hops, client->node 1 included).
   Target <= 1.15. Also the same with the idle floors and the plain ratio to in-process execution.
3. pipelined throughput under concurrent load divided by the slowest node's solo rate (1 / its median
   compute time per request). Target >= 0.8 with the nodes on separate cores where the machine has them.
4. where network namespaces work (distree.netem): latency over shaped links divided by
   compute + bytes / bandwidth + delay. Target within 10 %.

Usage: python benchmarks/runtime_overhead.py [--requests 300] [--large wrn-16-8] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch

from distree.checkpoint import save_checkpoint
from distree.models import create_model
from distree.policies import create_policy
from distree.runtime import ClusterClient, LocalCluster, load_spec, node_info
from distree.runtime.cluster import free_ports
from distree.runtime.protos import node_pb2
from distree.runtime.spec import DEFAULT_MAX_MESSAGE
from distree.runtime.spec_toml import spec_toml
from distree.runtime.transport import channel_options

BARE_SERVICE = "/bare.Echo/Call"
OPTS = channel_options(DEFAULT_MAX_MESSAGE)  # the runtime's own channel and server options


def _answer_bytes() -> int:
    """Size of a Forward response answering one row (10 classes), as the runtime sends it."""
    a = node_pb2.Answer(request_id=f"1.{os.getpid()}.12345", exit_node=4, probs=[0.1] * 10, score=0.5)
    r = node_pb2.ForwardResponse(
        answers=[a], compute_s=1e-3, queue_s=1e-5, downstream_s=1e-3, est_compute_s=1e-3, est_continue_s=1e-3
    )
    r.server_s = 1e-3
    return r.ByteSize()


ANSWER_BYTES = _answer_bytes()


# ---------------------------------------------------------------------------- transport floor
async def _bare_server(port: int, model_name: str | None) -> None:
    """Echo server. ``Call`` replies at once; ``SegK`` first runs segment K + exit K of ``model_name`` (1 torch
    thread, on the event loop) and puts its compute seconds in the reply's first 8 bytes."""
    server = grpc.aio.server(options=OPTS)
    reply = b"a" * ANSWER_BYTES

    async def call(req: bytes, ctx) -> bytes:
        return reply

    methods = {"Call": grpc.unary_unary_rpc_method_handler(call)}
    if model_name:
        torch.set_num_threads(1)
        model = create_model(model_name, num_nodes=4, num_classes=10).eval()
        shapes = [tuple(model.input_shape), *(tuple(s) for s in model.cost_profile().hop_shapes)]
        pad = b"a" * (ANSWER_BYTES - 8)

        def seg_handler(k: int):
            seg, head, x = model.segments[k], model.exits[k], torch.zeros(1, *shapes[k])

            async def run(req: bytes, ctx) -> bytes:
                t = time.perf_counter()
                with torch.inference_mode():
                    head(seg(x))
                return struct.pack("<d", time.perf_counter() - t) + pad

            return run

        for k in range(4):
            methods[f"Seg{k + 1}"] = grpc.unary_unary_rpc_method_handler(seg_handler(k))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bare.Echo", methods),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _bare_aio(addr: str, nbytes: int, n: int) -> list[float]:
    payload = os.urandom(nbytes)
    async with grpc.aio.insecure_channel(addr, options=OPTS) as ch:
        call = ch.unary_unary(BARE_SERVICE)
        out = []
        for i in range(n + 20):
            t = time.perf_counter()
            await call(payload, timeout=10)
            if i >= 20:
                out.append(time.perf_counter() - t)
    return out


def _bare_sync(addr: str, nbytes: int, n: int) -> list[float]:
    payload = os.urandom(nbytes)
    with grpc.insecure_channel(addr, options=OPTS) as ch:
        call = ch.unary_unary(BARE_SERVICE)
        out = []
        for i in range(n + 20):
            t = time.perf_counter()
            call(payload, timeout=10)
            if i >= 20:
                out.append(time.perf_counter() - t)
    return out


class BareFloor:
    """A bare grpc.aio echo server in its own process (optionally able to compute a model's segments)."""

    def __init__(self, cpu: set[int] | None = None, model_name: str | None = None) -> None:
        self.port = free_ports(1)[0]
        cmd = [sys.executable, __file__, "--bare-server", str(self.port)]
        if model_name:
            cmd += ["--bare-model", model_name]
        self.proc = subprocess.Popen(cmd)
        if cpu:
            os.sched_setaffinity(self.proc.pid, cpu)
        self.addr = f"127.0.0.1:{self.port}"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                with grpc.insecure_channel(self.addr) as ch:
                    grpc.channel_ready_future(ch).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                time.sleep(0.1)
        raise RuntimeError("bare echo server did not start")

    def aio(self, nbytes: int, n: int) -> float:
        return float(np.median(asyncio.run(_bare_aio(self.addr, nbytes, n))))

    def sync(self, nbytes: int, n: int) -> float:
        return float(np.median(_bare_sync(self.addr, nbytes, n)))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------------------- setup
def make_cluster_files(model_name: str, tmp: Path, *, speeds: list[float] | None = None) -> Path:
    """Untrained (random) weights are enough for timing. Returns the spec path."""
    torch.manual_seed(0)
    model = create_model(model_name, num_nodes=4, num_classes=10)
    ck = save_checkpoint(
        model,
        tmp / model_name,
        classes=[str(i) for i in range(10)],
        normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    pol = create_policy("last-exit", 4).save(tmp / "last-exit.json")
    ports = free_ports(4)
    spec = tmp / f"{model_name}.toml"
    spec.write_text(spec_toml(ck, pol, [{"address": f"127.0.0.1:{p}"} for p in ports], threads=1))
    return spec


@torch.no_grad()
def in_process_s(model_name: str, n: int) -> tuple[float, list[float]]:
    """Median time of sequential segment+exit execution at batch 1 (and per node)."""
    torch.manual_seed(0)
    model = create_model(model_name, num_nodes=4, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    per = [[] for _ in range(4)]
    for i in range(n + 10):
        h = x
        for k in range(4):
            t = time.perf_counter()
            h, _ = model.forward_segment(k, h)
            if i >= 10:
                per[k].append(time.perf_counter() - t)
    per_med = [float(np.median(p)) for p in per]
    totals = np.sum(np.asarray(per), axis=0)
    return float(np.median(totals)), per_med


def machine() -> str:
    name = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name or platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def pinning(n_nodes: int) -> tuple[dict[int, set[int]] | None, set[int] | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= n_nodes + 2:
        return (
            {k: {cpus[k]} for k in range(1, n_nodes + 1)},
            {cpus[0]},
            f"nodes pinned to cores {cpus[1 : n_nodes + 1]}, client on core {cpus[0]}",
        )
    return None, None, f"not pinned: {len(cpus)} CPUs for {n_nodes} nodes + client (needs {n_nodes + 2})"


# ---------------------------------------------------------------------------- measurements
async def _serial_phase(
    node1: str, bare_addr: str, x: np.ndarray, hop_bytes: list[int], n: int, block: int = 10
) -> tuple[list[float], list[list[float]], list[list[float]], list[list[float]]]:
    """Blocks of chain requests interleaved with blocks of bare calls of every hop's size (same noise).

    Returns chain latencies, idle floors per hop, compute-matched floors per hop (round trip minus
    the echo server's compute of the callee's segment) and that compute time per segment."""
    from distree.runtime.client import build_request, parse_response
    from distree.runtime.kserve import SERVICE
    from distree.runtime.protos import kserve_v2_pb2 as pb

    req = build_request(x)
    payloads = [os.urandom(b) for b in hop_bytes]
    lat: list[float] = []
    floors: list[list[float]] = [[] for _ in hop_bytes]
    floors_c: list[list[float]] = [[] for _ in hop_bytes]
    seg_s: list[list[float]] = [[] for _ in hop_bytes]
    async with (
        grpc.aio.insecure_channel(node1, options=OPTS) as ch,
        grpc.aio.insecure_channel(bare_addr, options=OPTS) as bch,
    ):
        infer = ch.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        bare = bch.unary_unary(BARE_SERVICE)
        seg = [bch.unary_unary(f"/bare.Echo/Seg{i + 1}") for i in range(len(hop_bytes))]  # hop i's callee
        for _ in range(30):
            await infer(req, timeout=30)
            for i, p in enumerate(payloads):
                await bare(p, timeout=10)
                await seg[i](p, timeout=10)
        for _ in range(max(1, n // block)):
            for _ in range(block):
                t = time.perf_counter()
                r = parse_response(await infer(req, timeout=30))
                lat.append(time.perf_counter() - t)
                assert int(r.exit_node[0]) == 4, "last-exit must answer at node 4"
            for i, p in enumerate(payloads):
                for _ in range(block):
                    t = time.perf_counter()
                    await bare(p, timeout=10)
                    floors[i].append(time.perf_counter() - t)
                for _ in range(block):
                    t = time.perf_counter()
                    rep = await seg[i](p, timeout=10)
                    c = struct.unpack("<d", rep[:8])[0]
                    floors_c[i].append(time.perf_counter() - t - c)
                    seg_s[i].append(c)
    return lat, floors, floors_c, seg_s


def measure_model(
    model_name: str,
    tmp: Path,
    n: int,
    *,
    concurrency: int,
    n_load: int,
    cpus: dict[int, set[int]] | None,
) -> dict:
    spec_path = make_cluster_files(model_name, tmp)
    spec = load_spec(spec_path)
    model = create_model(model_name, num_nodes=4, num_classes=10)
    cost = model.cost_profile()
    inproc, per_node = in_process_s(model_name, n)
    hop_bytes = [cost.input_bytes, *cost.hop_bytes]
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    res: dict = {"model": model_name, "hop_bytes": hop_bytes, "inproc_s": inproc, "inproc_per_node_s": per_node}
    bare = BareFloor(cpu=(cpus or {}).get(2), model_name=model_name)
    try:
        with LocalCluster(spec, cpus=cpus) as cluster:
            cluster.start(timeout_s=180)
            res.update(_cluster_phase(spec, bare, x, hop_bytes, n, concurrency, n_load))
    finally:
        bare.close()
    res["ratio_e2e_floor"] = res["e2e_s"] / (inproc + sum(res["floors_c_s"]))
    res["ratio_e2e_idle"] = res["e2e_s"] / (inproc + sum(res["floors_aio_s"]))
    res["ratio_e2e_inproc"] = res["e2e_s"] / inproc
    res["ratio_e2e_bare_chain"] = res["e2e_s"] / (sum(res["bare_compute_s"]) + sum(res["floors_c_s"]))
    return res


def _cluster_phase(
    spec, bare: BareFloor, x: np.ndarray, hop_bytes: list[int], n: int, concurrency: int, n_load: int
) -> dict:
    lat, floors, floors_c, seg_s = asyncio.run(_serial_phase(spec.nodes[0].address, bare.addr, x, hop_bytes, n))
    # only the samples of the measured requests (the newest len(lat)), not the warm-up's
    infos = [json.loads(node_info(nd.address).stats_json)["recent"] for nd in spec.nodes]
    with ClusterClient(spec.nodes[0].address) as client:
        client.infer_many([x] * 50, concurrency=concurrency)
        t = time.perf_counter()
        out = client.infer_many([x] * n_load, concurrency=concurrency)
        wall = time.perf_counter() - t
    bad = [o for o in out if isinstance(o, grpc.RpcError)]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed under load: {bad[0]}")
    m = len(lat)
    floors_aio = [float(np.median(f)) for f in floors]
    floors_c = [float(np.median(f)) for f in floors_c]
    hop = [float(np.median(infos[k]["hop_s"][-m:])) for k in range(3)]
    compute = [float(np.median(infos[k]["compute_s"][-m:])) for k in range(4)]
    e2e = float(np.median(lat))
    res = dict(
        e2e_s=e2e,
        hop_s=hop,
        floors_aio_s=floors_aio,
        floors_c_s=floors_c,
        bare_compute_s=[float(np.median(c)) for c in seg_s],
        node_compute_s=compute,
        ratio_hop=[hop[k] / floors_c[k + 1] for k in range(3)],
        ratio_hop_idle=[hop[k] / floors_aio[k + 1] for k in range(3)],
        throughput=n_load / wall,
        slowest_solo=1.0 / max(compute),
    )
    res["ratio_throughput"] = res["throughput"] / res["slowest_solo"]
    return res


def measure_netem(tmp: Path, n: int, rate_mbit: float, delay_ms: float) -> dict | str:
    try:
        from distree.netem import NetnsChain, netem_available
    except ImportError as e:
        return f"distree.netem is not available ({e})"
    ok, why = netem_available()
    if not ok:
        return f"network namespaces not usable here: {why}"
    return _netem_run(NetnsChain, tmp, n, rate_mbit, delay_ms)


def _netem_client(addr: str, n: int) -> None:
    """Run inside the chain's client namespace: print the median latency of ``n`` serial requests (JSON)."""
    from distree.runtime.client import wait_healthy

    if not wait_healthy(addr, timeout_s=120):  # listening is not ready: node 1 serves once its successors do
        raise SystemExit(f"node 1 at {addr} did not report SERVING within 120 s")
    x = np.zeros((1, 3, 32, 32), np.float32)
    with ClusterClient(addr) as client:
        for _ in range(5):
            client.infer(x, rpc_timeout_s=60)
        lat = [client.infer(x, rpc_timeout_s=60).latency_s for _ in range(n)]
    print(json.dumps({"median_s": float(np.median(lat))}))


def _netem_run(chain_cls, tmp: Path, n: int, rate_mbit: float, delay_ms: float) -> dict | str:
    """4 nodes in 4 namespaces; the 3 node-to-node links shaped to ``rate_mbit`` and ``delay_ms`` one way."""
    model_name = "wrn-16-2"
    spec_path = make_cluster_files(model_name, tmp / "netem")
    base = load_spec(spec_path)
    inproc, _ = in_process_s(model_name, 50)
    cost = create_model(model_name, num_nodes=4, num_classes=10).cost_profile()
    with chain_cls(4) as chain:
        addrs = [f"{chain.addr(k)}:7000" for k in range(1, 5)]
        spec_path.write_text(spec_toml(base.checkpoint, base.policy, [{"address": a} for a in addrs], threads=1))
        for k in range(1, 4):
            chain.link(k).shape(rate_mbit=rate_mbit, delay_ms=delay_ms)
        procs = [
            chain.node(k).run(
                [sys.executable, "-m", "distree", "serve", "--spec", str(spec_path), "--node", str(k)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for k in range(1, 5)
        ]
        try:
            for k in range(1, 5):
                chain.node(k).wait_tcp(chain.addr(k), 7000, timeout_s=120)
            p = chain.node(0).run(
                [sys.executable, __file__, "--netem-client", addrs[0], "--requests", str(n)],
                stdout=subprocess.PIPE,
                text=True,
            )
            out, _ = p.communicate(timeout=600)
            if p.returncode != 0:
                return f"client in the namespace failed (exit {p.returncode})"
            e2e = json.loads(out.strip().splitlines()[-1])["median_s"]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)
    wire = sum(b * 8 / (rate_mbit * 1e6) for b in cost.hop_bytes)
    delays = 2 * 3 * delay_ms / 1000  # request and answer cross each of the 3 shaped links
    model_s = inproc + wire + delays
    return {
        "e2e_s": e2e,
        "model_s": model_s,
        "ratio": e2e / model_s,
        "rate_mbit": rate_mbit,
        "delay_ms": delay_ms,
        "inproc_s": inproc,
        "wire_s": wire,
        "delay_s": delays,
    }


# ---------------------------------------------------------------------------- report
def verdict(value: float, target: float, op: str) -> str:
    ok = value <= target if op == "<=" else value >= target
    return f"{'met' if ok else 'MISSED'} (target {op} {target})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bare-model", help=argparse.SUPPRESS)
    ap.add_argument("--netem-client", help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=300, help="serial requests per latency measurement")
    ap.add_argument("--load", type=int, default=600, help="requests in the throughput measurement")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--large", default="wrn-16-8", help="the compute-dominated model")
    ap.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    ap.add_argument("--no-netem", action="store_true")
    ap.add_argument("--netem-rate-mbit", type=float, default=20.0)
    ap.add_argument("--netem-delay-ms", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.bare_server:
        asyncio.run(_bare_server(a.bare_server, a.bare_model))
        return 0
    if a.netem_client:
        _netem_client(a.netem_client, a.requests)
        return 0
    torch.set_num_threads(1)
    n = 40 if a.quick else a.requests
    n_load = 120 if a.quick else a.load
    cpus, client_cpu, pin_note = pinning(4)
    if client_cpu:
        os.sched_setaffinity(0, client_cpu)
    print("distree runtime overhead benchmark")
    print(
        f"machine: {machine()}; python {platform.python_version()}, torch {torch.__version__}, "
        f"grpcio {grpc.__version__}; 1 torch thread per process"
    )
    print(f"setup: 4 node processes on loopback, last-exit policy, batch 1, untrained weights; {pin_note}")
    print(
        f"runs: {n} serial requests per latency median (after 30 warm-up), in blocks of 10 interleaved with "
        f"blocks of 10 bare calls per hop size, idle and compute-matched (floors: medians of {n} calls each); "
        f"{n_load} requests at concurrency {a.concurrency} for throughput (a quarter for the larger model); "
        f"all in this one run; bare calls use the runtime's channel options and a {ANSWER_BYTES}-byte reply"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="distree-bench-") as d:
        for m in ("wrn-16-2", a.large):
            results.append(
                measure_model(
                    m,
                    Path(d),
                    n,
                    concurrency=a.concurrency,
                    n_load=n_load // (4 if m != "wrn-16-2" else 1),
                    cpus=cpus,
                )
            )
        netem = (
            "skipped (--no-netem)"
            if a.no_netem
            else measure_netem(Path(d), max(20, n // 5), a.netem_rate_mbit, a.netem_delay_ms)
        )
    ms = 1e3
    for r in results:
        print(
            f"\n== {r['model']} (bytes per hop: client->1 {r['hop_bytes'][0]}, "
            f"then {', '.join(str(b) for b in r['hop_bytes'][1:])})"
        )
        print(
            f"in-process segments+exits: {r['inproc_s'] * ms:.3f} ms "
            f"(per node {', '.join(f'{x * ms:.3f}' for x in r['inproc_per_node_s'])})"
        )
        for k in range(3):
            print(
                f"hop {k + 1}->{k + 2}: forward {r['hop_s'][k] * ms:.3f} ms / bare grpc.aio compute-matched "
                f"{r['floors_c_s'][k + 1] * ms:.3f} ms = {r['ratio_hop'][k]:.2f}  "
                f"{verdict(r['ratio_hop'][k], 1.2, '<=')}"
                f"; / idle {r['floors_aio_s'][k + 1] * ms:.3f} ms = {r['ratio_hop_idle'][k]:.2f}"
            )
        floor_c = sum(r["floors_c_s"])
        floor_i = sum(r["floors_aio_s"])
        print(
            f"end to end: {r['e2e_s'] * ms:.3f} ms / (in-process {r['inproc_s'] * ms:.3f} + compute-matched floors "
            f"{floor_c * ms:.3f}) = {r['ratio_e2e_floor']:.3f}  {verdict(r['ratio_e2e_floor'], 1.15, '<=')}; "
            f"with idle floors {floor_i * ms:.3f}: {r['ratio_e2e_idle']:.3f}"
        )
        print(f"end to end / in-process alone: {r['ratio_e2e_inproc']:.2f}")
        print(
            f"same segments computed by the echo process between bare calls (same idle gaps as a node): "
            f"{', '.join(f'{c * ms:.3f}' for c in r['bare_compute_s'])} ms; end to end / (their sum + "
            f"compute-matched floors) = {r['ratio_e2e_bare_chain']:.3f}"
        )
        print(
            f"throughput: {r['throughput']:.1f} req/s / slowest node solo {r['slowest_solo']:.1f} req/s "
            f"(node compute ms {', '.join(f'{c * ms:.3f}' for c in r['node_compute_s'])}) = "
            f"{r['ratio_throughput']:.2f}  {verdict(r['ratio_throughput'], 0.8, '>=')}"
        )
        if r["ratio_throughput"] < 0.8 and cpus is None:
            print(
                f"  why: {os.cpu_count()} CPUs shared by 4 node processes, the client and the gRPC threads; "
                f"the nodes cannot all run at once, so the pipeline is CPU-bound (at most about "
                f"{os.cpu_count()}/4 of the per-node rate)"
            )
    print("\n== shaped links (distree.netem)")
    if isinstance(netem, str):
        print(f"not measured: {netem}")
    else:
        print(
            f"{netem['rate_mbit']} Mbit/s + {netem['delay_ms']} ms per link: measured {netem['e2e_s'] * ms:.2f} ms"
            f" / model (compute + bytes/bandwidth + delay) {netem['model_s'] * ms:.2f} ms = {netem['ratio']:.3f}  "
            f"{'met' if abs(netem['ratio'] - 1) <= 0.1 else 'MISSED'} (target within 10%)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
