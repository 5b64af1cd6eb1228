"""Fidelity: the simulator against the real runtime on a loopback cluster, same inputs.

Same checkpoint, same policy files, same Poisson arrival times and samples, same devices and links:

1. devices: emulated edge devices slower than this machine. Every node of the 4-node ``LocalCluster``
   (``distree serve`` processes) gets ``speed = { kind = "constant", factor = F }``: it computes for real,
   then sleeps so that the work takes real / F. Sleeping uses no CPU, so the 2-3 node processes that share
   a core no longer slow each other down, and the simulator's independent devices are a fair model. F is
   chosen so that the slowest node computes ``--service-ms`` (40 ms), like a small edge CPU, far above the
   per-hop Python overhead; the Poisson rate puts that node at ``--util`` (0.6) under last-exit, so
   requests queue and the comparison tests the queueing model, not a sum of constants;
2. the simulator's devices, three ways (each with the same constant speed profile, F):
   - ``in-situ calibration`` (the verdict): each node's compute time as the node itself measures it (its
     ``compute_s`` statistics over 20 sequential requests before the timed run, mean and spread), and the
     per-hop transport from the nodes' ``hop_s``;
   - ``idle-gap profile x factor``: ``distree.sim.profile.profile_device``'s per-node time, re-measured
     with ``--service-ms`` of sleep before each call (a core that slept is slower), divided by F;
   - ``back-to-back profile x factor``: the profile measured in a tight loop, divided by F;
3. links (profile rows): a bare gRPC unary echo between two processes on loopback, timed at three
   payload sizes and fitted as ``rtt(b) = a + b / B``; every simulated link gets ``delay_s = a / 2`` and
   bandwidth ``B``;
4. policies: last-exit and a confidence policy with thresholds at the 70th percentile of each early
   exit's confidence on the samples (so that early exits really happen).

Prints, per policy, mean and p95 latency of both sides and their ratios (sim / runtime; target within
15 %), and the fraction of requests that exited at the same node. ``--native`` adds the un-emulated
run (the machine's own speed: 4 node processes and the client contend for the CPUs).

    .venv/bin/python benchmarks/sim_vs_runtime.py [--checkpoint runs/cifar/distree-conv8] [--requests 400]
                                                  [--service-ms 40] [--util 0.6] [--quick] [--native]

Without a checkpoint (or when its dataset is not on disk) it uses random inputs (or an untrained
WRN-16-2): timing does not depend on the weights.
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
from collections.abc import Callable
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
from distree.runtime.spec_toml import spec_toml
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


@torch.no_grad()
def profile_idle(ckpt: Path, x: np.ndarray, gap_s: float, repeats: int) -> list[float]:
    """Per-node segment + head time when each call follows ``gap_s`` of idle sleep, as on an emulated node.

    A node of an emulated slow device computes for real, then sleeps; after the sleep the core and its
    caches are cold, and the same work takes longer than in a back-to-back profiling loop.
    """
    model, _ = load_checkpoint(ckpt)
    model.eval()
    h = torch.from_numpy(x[:1].copy())
    ins = []
    for k in range(model.num_nodes):
        ins.append(h)
        h, _ = model.forward_segment(k, h)
    out = []
    for k in range(model.num_nodes):
        ts = []
        for _ in range(repeats + 2):
            time.sleep(gap_s)
            t = time.perf_counter()
            model.forward_segment(k, ins[k])
            ts.append(time.perf_counter() - t)
        out.append(float(np.median(ts[2:])))
    return out


# ---------------------------------------------------------------------------- runtime side
Schedule = tuple[np.ndarray, np.ndarray]  # (arrival times s, sample index) per request


def run_runtime(
    spec_path: Path, x: np.ndarray, schedule: Schedule | Callable[[dict[str, Any]], Schedule], n_cal: int = 100
) -> dict[str, Any]:
    """Warm up, calibrate with ``n_cal`` sequential requests, then run the open-loop schedule.

    Request k is sent at ``schedule[0][k]`` seconds after the start with input ``x[schedule[1][k]]``;
    ``schedule`` may also be a function of the calibration that returns them.
    """
    spec = load_spec(spec_path)
    with LocalCluster(spec) as cl:
        cl.start()
        ch = make_channel(spec.nodes[0].address)
        infer = ch.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
                               response_deserializer=pb.ModelInferResponse.FromString)  # fmt: skip
        # warm-up: every node loads, JITs and connects before the timed run
        for i in range(30):
            parse_response(infer(build_request(x[i % x.shape[0] : i % x.shape[0] + 1]), timeout=60))
        # in-situ calibration: sequential requests; per-node compute and per-hop transport from the nodes' stats
        seq = []
        for i in range(n_cal):
            t = time.perf_counter()
            parse_response(infer(build_request(x[i % x.shape[0] : i % x.shape[0] + 1]), timeout=60))
            seq.append(time.perf_counter() - t)
            time.sleep(0.01)
        full = [json.loads(node_info(n.address).stats_json) for n in spec.nodes]
        before_batches = [st["counts"].get("batches", 0) for st in full]
        stats = [st["recent"] for st in full]
        nn = len(spec.nodes)
        comp = [np.asarray(st["compute_s"][-n_cal:], dtype=float) for st in stats]
        compute = np.array([float(np.mean(c)) if c.size else float("nan") for c in comp])
        cv = np.array([float(np.std(c) / np.mean(c)) if c.size > 1 else 0.0 for c in comp])
        hop = np.array([float(np.mean(stats[k]["hop_s"][-n_cal:])) for k in range(nn - 1)])
        uplink = float(np.mean(seq)) - float(np.sum(compute)) - float(np.sum(hop))
        cal = {"compute_s": compute, "compute_cv": cv, "hop_s": hop, "uplink_s": uplink,
               "sequential_s": float(np.mean(seq))}  # fmt: skip
        arrival, sample = schedule(cal) if callable(schedule) else schedule
        r = arrival.shape[0]
        lat = np.full(r, np.nan)
        exits = np.zeros(r, dtype=np.int64)
        done = threading.Event()
        left = [r]
        lock = threading.Lock()
        reqs = [build_request(x[s : s + 1], request_id=str(k)) for k, s in enumerate(sample)]
        sent = np.zeros(r)

        def finish(k: int, fut: grpc.Future) -> None:
            t = time.perf_counter()
            try:
                res = parse_response(fut.result())
                lat[k] = t - sent[k]
                exits[k] = int(res.exit_node[0])
            finally:
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
        # each node's compute during the timed run (the samples after the calibration's)
        after = [json.loads(node_info(n.address).stats_json) for n in spec.nodes]
        run_compute = []
        for k in range(nn):
            m = after[k]["counts"].get("batches", 0) - before_batches[k]
            c = np.asarray(after[k]["recent"]["compute_s"][-m:] if m > 0 else [], dtype=float)
            run_compute.append(
                (float(np.mean(c)) if c.size else float("nan"), float(np.std(c) / np.mean(c)) if c.size > 1 else 0.0)
            )
    return {"latency_s": lat, "exit_node": exits, "arrival_s": arrival, "sample": sample, "run_compute": run_compute,
            **cal}  # fmt: skip


# ---------------------------------------------------------------------------- comparison
def compare(policy: str, inputs: str, sim: dict[str, np.ndarray], rt: dict[str, Any]) -> dict[str, Any]:
    ok = np.isfinite(rt["latency_s"])
    return {
        "policy": policy, "inputs": inputs,
        "sim_mean": float(np.mean(sim["latency_s"])), "rt_mean": float(np.mean(rt["latency_s"][ok])),
        "sim_p95": float(np.percentile(sim["latency_s"], 95)), "rt_p95": float(np.percentile(rt["latency_s"][ok], 95)),
        "same_exit": float(np.mean(sim["exit_node"][ok] == rt["exit_node"][ok])), "answered": int(ok.sum()),
    }  # fmt: skip


def print_table(title: str, rows: list[dict[str, Any]], verdict: tuple[str, ...]) -> None:
    print(f"\n{title}\n")
    print("| policy | simulator inputs | sim mean ms | runtime mean ms | ratio | sim p95 ms | runtime p95 ms "
          "| ratio | same exit | within 15 % |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rm, rp = r["sim_mean"] / r["rt_mean"], r["sim_p95"] / r["rt_p95"]
        ok = "yes" if max(abs(rm - 1), abs(rp - 1)) <= 0.15 else "no"
        print(f"| {r['policy']} | {r['inputs']} | {r['sim_mean'] * 1e3:.2f} | {r['rt_mean'] * 1e3:.2f} | "
              f"{rm:.3f} | {r['sim_p95'] * 1e3:.2f} | {r['rt_p95'] * 1e3:.2f} | {rp:.3f} | "
              f"{r['same_exit'] * 100:.1f} % | {ok} |")  # fmt: skip
    for label in sorted({r["inputs"] for r in rows}, key=[r["inputs"] for r in rows].index):
        sel = [r for r in rows if r["inputs"] == label]
        worst = max(max(abs(r["sim_mean"] / r["rt_mean"] - 1), abs(r["sim_p95"] / r["rt_p95"] - 1)) for r in sel)
        tag = "VERDICT " if label in verdict else ""
        print(f"{tag}largest deviation with the {label}: {worst * 100:.1f} % -> "
              f"{'PASS' if worst <= 0.15 else 'FAIL'} (target <= 15 %)")  # fmt: skip


def insitu_scenario(tmp: Path, name: str, prof: dict[str, Any], cal: dict[str, Any], workload: dict[str, Any],
                    cv: bool) -> Any:  # fmt: skip
    """Scenario whose node compute and hop transport are the nodes' own sequential-run statistics."""
    n = len(prof["node_s"])
    (tmp / f"{name}.json").write_text(json.dumps({**prof, "node_s": [float(v) for v in cal["compute_s"]],
                                                  "exit_s": [0.0] * n}))  # fmt: skip
    nodes = ([{"node": k + 1, "service": "lognormal", "service_cv": max(float(c), 1e-3)}
              for k, c in enumerate(cal["compute_cv"])] if cv else [])  # fmt: skip
    return parse_scenario(
        {"name": name, "seed": 0, "workload": workload,
         "devices": {"profile": str(tmp / f"{name}.json"), "use": "seconds", "nodes": nodes},
         "network": {"return": "chain",
                     "uplink": {"bandwidth_mbps": 1e6, "delay_s": max(cal["uplink_s"], 0.0) / 2},
                     "hops": {"bandwidth_mbps": 1e6, "delay_s": 0.0},
                     "hop": [{"hop": k + 1, "delay_s": float(v) / 2} for k, v in enumerate(cal["hop_s"])]}}
    )  # fmt: skip


def print_calibration(cal: dict[str, Any], n_cal: int) -> None:
    print(f"in-situ calibration ({n_cal} sequential requests): node compute ms "
          + ", ".join(f"{v * 1e3:.3f}" for v in cal["compute_s"]) + " (cv "
          + ", ".join(f"{v:.2f}" for v in cal["compute_cv"]) + "); hop transport ms "
          + ", ".join(f"{v * 1e3:.3f}" for v in cal["hop_s"]) + f"; client<->node 1 {cal['uplink_s'] * 1e3:.3f}; "
          f"sequential latency {cal['sequential_s'] * 1e3:.2f}")  # fmt: skip


def run_cluster(
    tmp: Path,
    tag: str,
    ckpt: Path,
    pfile: Path,
    n: int,
    x: np.ndarray,
    reqs: Any,
    n_cal: int,
    speed: dict[str, Any] | None = None,
    nominal_ms: list[float] | None = None,
) -> dict[str, Any]:
    """A LocalCluster of ``n`` nodes (each with the speed profile and nominal compute time, if any) running
    ``reqs`` (or a schedule)."""
    ports = free_ports(n)
    nodes: list[dict[str, Any]] = [{"address": f"127.0.0.1:{p}"} for p in ports]
    for k, nd in enumerate(nodes):
        if speed is not None:
            nd["speed"] = speed
        if nominal_ms is not None:
            nd["nominal_compute_ms"] = float(nominal_ms[k])
    spec_path = tmp / f"{tag}.toml"
    spec_path.write_text(spec_toml(ckpt, pfile, nodes, threads=1))
    return run_runtime(spec_path, x, reqs if callable(reqs) else (reqs.arrival_s, reqs.sample), n_cal=n_cal)


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT if DEFAULT_CKPT.is_dir() else None)
    ap.add_argument("--requests", type=int, default=600, help="requests per policy on the emulated devices")
    ap.add_argument(
        "--factor",
        type=float,
        default=None,
        help="emulated device speed factor (default: the slowest node computes --service-ms)",
    )
    ap.add_argument("--service-ms", type=float, default=40.0, help="slowest node's emulated compute time (ms)")
    ap.add_argument("--util", type=float, default=0.55, help="slowest node's utilisation under last-exit")
    ap.add_argument("--threshold", type=float, default=None,
                    help="confidence threshold at nodes 1-3 (default: calibrated so ~30 %% of the samples that "
                         "reach an early node exit there)")  # fmt: skip
    ap.add_argument(
        "--native",
        action="store_true",
        help="also run the un-emulated loopback cluster (the machine's own speed, no sleeping)",
    )
    ap.add_argument("--native-requests", type=int, default=100)
    ap.add_argument("--native-rate", type=float, default=20.0, help="Poisson arrivals per second, native run")
    ap.add_argument("--quick", action="store_true", help="250 requests per policy, fewer profile repeats")
    ap.add_argument("--echo-server", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server is not None:
        asyncio.run(_echo_server(args.echo_server))
        return
    torch.set_num_threads(1)
    n_req = 250 if args.quick else args.requests
    repeats = 10 if args.quick else 30
    t_begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        ckpt, x, labels, desc = setup_model(args.checkpoint, tmp, 500)
        trace = make_trace(ckpt, x, labels)
        n = trace.num_nodes
        cost = trace.cost
        prof = profile_device(ckpt, repeats=repeats, warmup=5, batch_sizes=[1], threads=1)
        (tmp / "device.json").write_text(json.dumps(prof))
        a, bw_bps, med = fit_link([64, cost.input_bytes, max(cost.hop_bytes)], repeats * 5)
        mbps = bw_bps * 8 / 1e6
        print(f"model: {desc}; {n} nodes; {os.cpu_count()} CPUs")
        print("device profile (ms per node, segment + head, 1 thread): "
              + ", ".join(f"{t * 1e3:.3f}" for t in prof["node_s"]) + "; FLOP/s "
              + ", ".join(f"{f / 1e9:.2f} G" for f in prof["flops_per_s"]))  # fmt: skip
        print("bare gRPC RTT (ms): " + ", ".join(f"{b} B: {t * 1e3:.3f}" for b, t in med.items())
              + f" -> link delay {a / 2 * 1e3:.3f} ms each way, {mbps:.0f} Mbit/s")  # fmt: skip
        link = {"bandwidth_mbps": mbps, "delay_s": a / 2}
        # policies: last exit, and confidence with thresholds at a quantile of each early exit's confidence
        if args.threshold is None:
            z = trace.logits - trace.logits.max(axis=2, keepdims=True)
            conf = (np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)).max(axis=2)  # (samples, nodes)
            thr = [float(np.quantile(conf[:, k], 0.7)) for k in range(n - 1)] + [0.0]
        else:
            thr = [args.threshold] * (n - 1) + [0.0]
        policies = {
            "last-exit": create_policy("last-exit", n),
            "confidence": create_policy("confidence", n, thr),
        }
        pfiles = {name: pol.save(tmp / f"{name}.json") for name, pol in policies.items()}
        print("confidence thresholds: " + ", ".join(f"{t:.3f}" for t in thr[:-1]))

        # ------------------------------------------------ emulated edge devices (the verdict)
        idle = np.asarray(profile_idle(ckpt, x, args.service_ms / 1e3, 10 if args.quick else 20), dtype=float)
        scale = idle / np.asarray(prof["node_s"], dtype=float)
        prof_idle = {**prof, "node_s": idle.tolist(),
                     "segment_s": (np.asarray(prof["segment_s"]) * scale).tolist(),
                     "exit_s": (np.asarray(prof["exit_s"]) * scale).tolist()}  # fmt: skip
        (tmp / "device-idle.json").write_text(json.dumps(prof_idle))
        print(f"idle-gap profile (ms per node, each call after {args.service_ms:g} ms of sleep): "
              + ", ".join(f"{t * 1e3:.3f}" for t in idle) + " (x " + ", ".join(f"{v:.2f}" for v in scale)
              + " the back-to-back profile)")  # fmt: skip
        factor = args.factor if args.factor is not None else min(1.0, float(idle.max()) / (args.service_ms / 1e3))
        speed = {"kind": "constant", "factor": float(factor)}
        print(f"\nemulated edge devices: speed factor {factor:.4f} on every node -> idle-gap profile x factor: "
              + ", ".join(f"{v / factor * 1e3:.1f} ms" for v in idle) + " ("
              + ", ".join(f"{f / r * factor / 1e9:.3f} G" for f, r in zip(prof["flops_per_s"], scale, strict=True))
              + " FLOP/s)")  # fmt: skip

        def workload_at(rate: float) -> dict[str, Any]:
            return {"arrival": "poisson", "rate_per_s": rate, "requests": n_req, "samples": "cycle"}

        def emulated(name: str, profile: str, rate: float) -> Any:
            return parse_scenario(
                {"name": name, "seed": 0, "workload": workload_at(rate),
                 "devices": {"profile": str(tmp / profile), "use": "seconds", "speed": speed},
                 "network": {"return": "chain", "uplink": link, "hops": link}}
            )  # fmt: skip

        chosen: dict[str, Any] = {}

        def schedule(cal: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
            # the Poisson rate that puts the slowest node (as the nodes measure themselves) at --util
            chosen["rate"] = rate = args.util / float(np.max(cal["compute_s"]))
            sc0 = emulated("emulated", "device-idle.json", rate)
            chosen["reqs"] = reqs = make_requests(sc0.workload, sc0.seed, trace.num_samples)
            return reqs.arrival_s, reqs.sample

        n_cal = 40
        runs = {"last-exit": run_cluster(tmp, "emu-last", ckpt, pfiles["last-exit"], n, x, schedule, n_cal, speed)}
        runs["confidence"] = run_cluster(tmp, "emu-conf", ckpt, pfiles["confidence"], n, x, chosen["reqs"], n_cal,
                                         speed)  # fmt: skip
        rate = chosen["rate"]
        cal = runs["last-exit"]
        for name, rt in runs.items():
            print(f"{name} cluster: ", end="")
            print_calibration(rt if name == "last-exit" else {**rt, "hop_s": cal["hop_s"], "uplink_s": cal["uplink_s"]},
                              n_cal)  # fmt: skip
        print(f"Poisson {rate:.2f}/s -> utilisation under last-exit (in-situ compute) "
              + ", ".join(f"{v * rate:.2f}" for v in cal["compute_s"]))  # fmt: skip
        for name, rt in runs.items():
            print(f"{name}: node compute during the timed run ms "
                  + ", ".join(f"{m * 1e3:.2f} (cv {c:.2f})" for m, c in rt["run_compute"]))  # fmt: skip
        sc_hot = emulated("emulated-hot", "device.json", rate)
        sc_idle = emulated("emulated-idle", "device-idle.json", rate)
        rows = []
        for name, pol in policies.items():
            rt = runs[name]
            # each cluster's own sequential calibration (its processes, its cores)
            # (transport from the last-exit cluster's calibration, where every request crosses every hop)
            own = {**rt, "hop_s": cal["hop_s"], "uplink_s": cal["uplink_s"]}
            sc_insitu = insitu_scenario(tmp, f"emulated-insitu-{name}", prof, own, workload_at(rate), cv=True)
            run_cal = {**own, "compute_s": np.array([m if np.isfinite(m) else 0.0 for m, _ in rt["run_compute"]]),
                       "compute_cv": np.array([c for _, c in rt["run_compute"]])}  # fmt: skip
            sc_run = insitu_scenario(tmp, f"emulated-inrun-{name}", prof, run_cal, workload_at(rate), cv=True)
            for label, scen in (("in-situ calibration", sc_insitu), ("idle-gap profile x factor", sc_idle),
                                ("back-to-back profile x factor", sc_hot),
                                ("timed run's own compute times", sc_run)):  # fmt: skip
                rows.append(compare(name, label, simulate(scen, trace, pol).records, rt))
        print_table(f"{n_req} requests per policy, Poisson {rate:.2f}/s, emulated edge devices (factor "
                    f"{factor:.4f}), loopback links, no deadline", rows, ("in-situ calibration",))  # fmt: skip

        # ------------------------------------------------ nodes emulating the offline profile itself
        # nominal_compute_ms = the idle-gap profile: each node takes profile / factor, whatever the host does
        label = "offline profile x factor (nodes emulate it)"
        nom = (idle * 1e3).tolist()
        rows_nom = []
        for name, pol in policies.items():
            rt_nom = run_cluster(tmp, f"nom-{name}", ckpt, pfiles[name], n, x, chosen["reqs"], 10, speed, nom)
            rows_nom.append(compare(name, label, simulate(sc_idle, trace, pol).records, rt_nom))
        print_table(
            f"same arrivals; every node emulates its offline profile (nominal_compute_ms = idle-gap profile, "
            f"factor {factor:.4f}): the simulator needs no measurement on the cluster",
            rows_nom,
            (label,),
        )

        # ------------------------------------------------ the machine's own speed (CPU-contended)
        if args.native:
            wl = {"arrival": "poisson", "rate_per_s": args.native_rate, "requests": args.native_requests,
                  "samples": "cycle"}  # fmt: skip
            sc_n = parse_scenario(
                {"name": "loopback", "seed": 0, "workload": wl,
                 "devices": {"profile": str(tmp / "device.json"), "use": "seconds"},
                 "network": {"return": "chain", "uplink": link, "hops": link}}
            )  # fmt: skip
            reqs_n = make_requests(sc_n.workload, sc_n.seed, trace.num_samples)
            runs_n = {name: run_cluster(tmp, f"native-{name}", ckpt, pfiles[name], n, x, reqs_n, 100)
                      for name in policies}  # fmt: skip
            print()
            print_calibration(runs_n["last-exit"], 100)
            sc_ni = insitu_scenario(tmp, "loopback-insitu", prof, runs_n["last-exit"], wl, cv=True)
            rows_n = []
            for name, pol in policies.items():
                for label, scen in (("offline profile", sc_n), ("in-situ calibration", sc_ni)):
                    rows_n.append(compare(name, label, simulate(scen, trace, pol).records, runs_n[name]))
            print_table(f"{args.native_requests} requests per policy, Poisson {args.native_rate:g}/s, native "
                        f"speed ({os.cpu_count()} CPUs shared by 4 nodes and the client), loopback, no deadline",
                        rows_n, ())  # fmt: skip
    print(f"\n(total wall time {time.perf_counter() - t_begin:.0f} s)")


if __name__ == "__main__":
    main()
