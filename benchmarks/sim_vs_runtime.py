"""Fidelity: the simulator against the real runtime on a loopback cluster, same inputs.

Same checkpoint, same policy file, same Poisson arrival times and samples, same device profile:

1. the device profile: ``distree.sim.profile.profile_device`` (per-node segment + head time, 1 torch thread,
   like every node process);
2. the links: a bare gRPC unary echo between two processes on loopback, timed at two payload sizes and
   fitted as ``rtt(b) = a + b / B``; every simulated link gets ``delay_s = a / 2`` and bandwidth ``B``
   (a hop costs a/2 + bytes/B forward and a/2 + answer/B back);
3. a 4-node ``LocalCluster`` (``distree serve`` processes) receives the requests at the simulated arrival
   times from an open-loop client; latency = answer time - send time;
4. the simulator runs the scenario built from 1 and 2 on the trace of the very same inputs.

Prints, per policy, mean and p95 latency of both and their ratios (sim / runtime; target within 15 %),
and the fraction of requests that exited at the same node.

    .venv/bin/python benchmarks/sim_vs_runtime.py [--checkpoint runs/cifar/distree-conv8] [--requests 300]
                                                  [--rate 20] [--quick]

Without a checkpoint (or when its dataset is not on disk) it uses an untrained WRN-16-2 on random inputs:
timing does not depend on the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from distree.checkpoint import load_checkpoint, save_checkpoint
from distree.models import create_model
from distree.policies import create_policy
from distree.runtime import LocalCluster, load_spec, node_info
from distree.runtime.client import build_request, make_channel, parse_response
from distree.runtime.cluster import free_ports
from distree.runtime.kserve import SERVICE
from distree.runtime.protos import kserve_v2_pb2 as pb
from distree.runtime.spec import spec_toml
from distree.sim import parse_scenario, simulate
from distree.sim.profile import profile_device
from distree.sim.workload import make_requests
from distree.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / "runs" / "cifar" / "distree-conv8"
ECHO = "/bare.Echo/Call"
OPTS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


# ---------------------------------------------------------------------------- transport fit
async def _echo_server(port: int) -> None:
    server = grpc.aio.server(options=OPTS)
    reply = b"a" * 64

    async def call(req: bytes, ctx) -> bytes:
        return reply

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bare.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def fit_link(sizes: list[int], n: int) -> tuple[float, float, dict[int, float]]:
    """Median RTT of a bare unary call per payload size; least-squares fit rtt = a + b / B."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, __file__, "--echo-server", str(port)])
    addr = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(addr, options=OPTS) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            call = ch.unary_unary(ECHO)
            med = {}
            for b in sizes:
                payload = os.urandom(b)
                ts = []
                for i in range(n + 20):
                    t = time.perf_counter()
                    call(payload, timeout=10)
                    if i >= 20:
                        ts.append(time.perf_counter() - t)
                med[b] = float(np.median(ts))
    finally:
        proc.kill()
        proc.wait()
    x = np.array(sizes, dtype=float)
    y = np.array([med[b] for b in sizes])
    slope, a = np.polyfit(x, y, 1)
    slope = max(float(slope), 1e-12)
    return float(a), 1.0 / slope, med


# ---------------------------------------------------------------------------- inputs and trace
def setup_model(ckpt: Path | None, tmp: Path, n: int) -> tuple[Path, np.ndarray, np.ndarray, str]:
    """(checkpoint dir, normalised float32 inputs (n, C, H, W), labels, description)."""
    if ckpt is not None and (ckpt / "model.json").is_file():
        model, side = load_checkpoint(ckpt)
        tc = side.get("train_config", {})
        try:
            from distree.data import load_split

            ds = load_split(side.get("dataset") or tc.get("dataset"), "test", tc.get("data_dir"))
            x = ds.images[:n].float() / 255.0
            m = torch.tensor(side["normalization"]["mean"]).view(1, -1, 1, 1)
            s = torch.tensor(side["normalization"]["std"]).view(1, -1, 1, 1)
            return ckpt, ((x - m) / s).numpy(), ds.labels[:n].numpy(), f"{ckpt} on its test split"
        except Exception as e:  # noqa: BLE001 - data not on this machine: random inputs time the same
            print(f"(dataset not available: {e}; using random inputs)")
            x = torch.randn((n, *model.input_shape), generator=torch.Generator().manual_seed(0))
            return ckpt, x.numpy(), np.zeros(n, dtype=np.int64), f"{ckpt} on random inputs"
    torch.manual_seed(0)
    model = create_model("wrn-16-2", num_nodes=4, num_classes=10)
    path = save_checkpoint(model, tmp / "wrn", classes=[str(i) for i in range(10)],
                           normalization={"mean": [0.5] * 3, "std": [0.25] * 3})  # fmt: skip
    x = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    return path, x.numpy(), np.zeros(n, dtype=np.int64), "untrained wrn-16-2 on random inputs"


@torch.no_grad()
def make_trace(ckpt: Path, x: np.ndarray, labels: np.ndarray) -> Trace:
    model, _ = load_checkpoint(ckpt)
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + 128])) for i in range(0, x.shape[0], 128)]
    logits = np.stack([torch.cat([o[k].logits for o in outs]).numpy() for k in range(model.num_nodes)], axis=1)
    feats = [torch.cat([o[k].features for o in outs]).numpy() for k in range(model.num_nodes)]
    return Trace(logits=logits.astype(np.float32), features=feats, labels=labels.astype(np.int64),
                 cost=model.cost_profile())  # fmt: skip


# ---------------------------------------------------------------------------- runtime side
def run_runtime(
    spec_path: Path, x: np.ndarray, arrival: np.ndarray, sample: np.ndarray, n_cal: int = 100
) -> dict[str, Any]:
    """Open-loop client: request k is sent at arrival[k] (seconds after the start) with input x[sample[k]]."""
    spec = load_spec(spec_path)
    r = arrival.shape[0]
    lat = np.full(r, np.nan)
    exits = np.zeros(r, dtype=np.int64)
    done = threading.Event()
    left = [r]
    lock = threading.Lock()
    with LocalCluster(spec) as cl:
        cl.start()
        ch = make_channel(spec.nodes[0].address)
        infer = ch.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)  # fmt: skip
        # warm-up: every node loads, JITs and connects before the timed run
        for i in range(30):
            parse_response(infer(build_request(x[i % x.shape[0] : i % x.shape[0] + 1]), timeout=60))
        # in-situ calibration: sequential requests; per-node compute and per-hop transport from the nodes' stats
        before = [json.loads(node_info(n.address).stats_json) for n in spec.nodes]
        seq = []
        for i in range(n_cal):
            t = time.perf_counter()
            parse_response(infer(build_request(x[i % x.shape[0] : i % x.shape[0] + 1]), timeout=60))
            seq.append(time.perf_counter() - t)
            time.sleep(0.01)
        after = [json.loads(node_info(n.address).stats_json) for n in spec.nodes]
        reqs = [build_request(x[s : s + 1], request_id=str(k)) for k, s in enumerate(sample)]
        sent = np.zeros(r)

        def finish(k: int, fut: grpc.Future) -> None:
            t = time.perf_counter()
            res = parse_response(fut.result())
            lat[k] = t - sent[k]
            exits[k] = int(res.exit_node[0])
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        t0 = time.perf_counter() + 0.2
        for k in range(r):
            wait = t0 + arrival[k] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent[k] = time.perf_counter()
            fut = infer.future(reqs[k], timeout=120)
            fut.add_done_callback(lambda f, k=k: finish(k, f))
        done.wait(timeout=300)
        ch.close()

    def mean_of_new(key: str, k: int) -> float:
        a, b = before[k].get(key, {}), after[k].get(key, {})
        n0, n1 = a.get("n", 0), b.get("n", 0)
        if n1 <= n0:
            return float("nan")
        return (n1 * b["mean"] - n0 * a.get("mean", 0.0)) / (n1 - n0)

    nn = len(spec.nodes)
    compute = np.array([mean_of_new("compute_s", k) for k in range(nn)])
    # spread of each node's compute time: a lognormal's mean / median = exp(sigma^2 / 2)
    # (a node no request reached has no samples: no spread)
    ratio = [after[k]["compute_s"].get("mean", 1.0) / max(after[k]["compute_s"].get("median", 1.0), 1e-12)
             for k in range(nn)]
    cv = np.sqrt(np.expm1(2.0 * np.log(np.maximum(ratio, 1.0))))
    hop = np.array([mean_of_new("hop_s", k) for k in range(nn - 1)])
    uplink = float(np.mean(seq)) - float(np.sum(compute)) - float(np.sum(hop))
    return {"latency_s": lat, "exit_node": exits, "compute_s": compute, "compute_cv": cv, "hop_s": hop,
            "uplink_s": uplink, "sequential_s": float(np.mean(seq))}  # fmt: skip


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT if DEFAULT_CKPT.is_dir() else None)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20.0, help="Poisson arrivals per second")
    ap.add_argument("--threshold", type=float, default=0.8, help="confidence policy threshold at nodes 1-3")
    ap.add_argument("--quick", action="store_true", help="100 requests, fewer repeats")
    ap.add_argument("--echo-server", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server is not None:
        asyncio.run(_echo_server(args.echo_server))
        return
    torch.set_num_threads(1)
    n_req = 100 if args.quick else args.requests
    repeats = 10 if args.quick else 40
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        ckpt, x, labels, desc = setup_model(args.checkpoint, tmp, 500)
        trace = make_trace(ckpt, x, labels)
        cost = trace.cost
        prof = profile_device(ckpt, repeats=repeats, warmup=5, batch_sizes=[1], threads=1)
        (tmp / "device.json").write_text(json.dumps(prof))
        a, bw_bps, med = fit_link([64, cost.input_bytes, max(cost.hop_bytes)], repeats * 5)
        mbps = bw_bps * 8 / 1e6
        print(f"model: {desc}; {trace.num_nodes} nodes; {os.cpu_count()} CPUs")
        print("device profile (ms per node, segment + head, 1 thread): "
              + ", ".join(f"{t * 1e3:.3f}" for t in prof["node_s"]))  # fmt: skip
        print("bare gRPC RTT (ms): " + ", ".join(f"{b} B: {t * 1e3:.3f}" for b, t in med.items())
              + f" -> link delay {a / 2 * 1e3:.3f} ms each way, {mbps:.0f} Mbit/s")  # fmt: skip
        link = {"bandwidth_mbps": mbps, "delay_s": a / 2}
        sc = parse_scenario(
            {
                "name": "loopback",
                "seed": 0,
                "workload": {"arrival": "poisson", "rate_per_s": args.rate, "requests": n_req, "samples": "cycle"},
                "devices": {"profile": str(tmp / "device.json"), "use": "seconds"},
                "network": {"return": "chain", "uplink": link, "hops": link},
            }  # fmt: skip
        )
        reqs = make_requests(sc.workload, sc.seed, trace.num_samples)
        policies = {
            "last-exit": create_policy("last-exit", trace.num_nodes),
            "confidence": create_policy("confidence", trace.num_nodes, [args.threshold] * 3 + [0.0]),
        }
        runs = {}
        for name, pol in policies.items():
            pfile = pol.save(tmp / f"{name}.json")
            ports = free_ports(trace.num_nodes)
            spec_path = tmp / f"{name}.toml"
            spec_path.write_text(spec_toml(ckpt, pfile, [{"address": f"127.0.0.1:{p}"} for p in ports], threads=1))
            runs[name] = run_runtime(spec_path, x, reqs.arrival_s, reqs.sample)
        cal = runs["last-exit"]
        print(f"in-situ calibration ({100} sequential last-exit requests): node compute ms "
              + ", ".join(f"{v * 1e3:.3f}" for v in cal["compute_s"]) + " (cv "
              + ", ".join(f"{v:.2f}" for v in cal["compute_cv"]) + "); hop transport ms "
              + ", ".join(f"{v * 1e3:.3f}" for v in cal["hop_s"]) + f"; client<->node 1 {cal['uplink_s'] * 1e3:.3f}; "
              f"sequential latency {cal['sequential_s'] * 1e3:.2f}")  # fmt: skip
        (tmp / "insitu.json").write_text(json.dumps({**prof, "node_s": [float(v) for v in cal["compute_s"]],
                                                     "exit_s": [0.0] * trace.num_nodes}))  # fmt: skip
        sc_insitu = parse_scenario(
            {"name": "loopback-insitu", "seed": 0,
             "workload": {"arrival": "poisson", "rate_per_s": args.rate, "requests": n_req, "samples": "cycle"},
             "devices": {"profile": str(tmp / "insitu.json"), "use": "seconds",
                         "nodes": [{"node": k + 1, "service": "lognormal", "service_cv": max(float(c), 1e-3)}
                                   for k, c in enumerate(cal["compute_cv"])]},
             "network": {"return": "chain",
                         "uplink": {"bandwidth_mbps": 1e6, "delay_s": max(cal["uplink_s"], 0.0) / 2},
                         "hops": {"bandwidth_mbps": 1e6, "delay_s": 0.0},
                         "hop": [{"hop": k + 1, "delay_s": float(v) / 2} for k, v in enumerate(cal["hop_s"])]}}
        )  # fmt: skip
        rows = []
        for name, pol in policies.items():
            rt = runs[name]
            ok = np.isfinite(rt["latency_s"])
            for label, scen in (("offline profile", sc), ("in-situ calibration", sc_insitu)):
                sim = simulate(scen, trace, pol).records
                rows.append({
                    "policy": name, "inputs": label,
                    "sim_mean": float(np.mean(sim["latency_s"])), "rt_mean": float(np.mean(rt["latency_s"][ok])),
                    "sim_p95": float(np.percentile(sim["latency_s"], 95)),
                    "rt_p95": float(np.percentile(rt["latency_s"][ok], 95)),
                    "same_exit": float(np.mean(sim["exit_node"][ok] == rt["exit_node"][ok])),
                    "answered": int(ok.sum()),
                })  # fmt: skip
        print(f"\n{n_req} requests, Poisson {args.rate:g}/s, loopback, no deadline\n")
        print("| policy | simulator inputs | sim mean ms | runtime mean ms | ratio | sim p95 ms | runtime p95 ms "
              "| ratio | same exit |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['policy']} | {r['inputs']} | {r['sim_mean'] * 1e3:.2f} | {r['rt_mean'] * 1e3:.2f} | "
                  f"{r['sim_mean'] / r['rt_mean']:.3f} | {r['sim_p95'] * 1e3:.2f} | {r['rt_p95'] * 1e3:.2f} | "
                  f"{r['sim_p95'] / r['rt_p95']:.3f} | {r['same_exit'] * 100:.1f} % |")  # fmt: skip
        for label in ("offline profile", "in-situ calibration"):
            sel = [r for r in rows if r["inputs"] == label]
            worst = max(max(abs(r["sim_mean"] / r["rt_mean"] - 1), abs(r["sim_p95"] / r["rt_p95"] - 1)) for r in sel)
            print(f"largest deviation with the {label}: {worst * 100:.1f} % (target <= 15 %)")


if __name__ == "__main__":
    main()
