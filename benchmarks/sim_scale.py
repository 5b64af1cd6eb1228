"""Simulator scale: requests through a 16-node chain, SimPy events/s vs the vectorised engine.

Prints wall time per engine and request count, events/s of the SimPy engine, the growth ratios
(time(10x requests) / time), the 10^6-request time against the 60 s target, and the largest
per-request latency difference between the engines on a shared run.

    .venv/bin/python benchmarks/sim_scale.py            # 10^4, 10^5, 10^6 (vector); 10^3, 10^4 (SimPy)
    .venv/bin/python benchmarks/sim_scale.py --quick    # smaller, for a smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from distree.models.cost import CostProfile
from distree.policies import create_policy
from distree.sim import parse_scenario, simulate
from distree.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
NODES = 16


def synthetic_trace(n: int = 2000, nodes: int = NODES, classes: int = 10, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(n, nodes, classes)).astype(np.float32)
    for i in range(nodes):
        logits[np.arange(n), i, labels] += 0.5 + 0.25 * i
    feats = [rng.normal(size=(n, 16)).astype(np.float32) for _ in range(nodes)]
    cost = CostProfile(segment_flops=[12_000_000] * nodes, exit_flops=[200_000] * nodes,
                       hop_bytes=[16_384] * (nodes - 1), input_bytes=12_288, output_bytes=classes * 4)  # fmt: skip
    return Trace(logits=logits, features=feats, labels=labels.astype(np.int64), cost=cost)


def scenario(requests: int):
    bw = str(ROOT / "tests" / "fixtures" / "traces" / "norway_bus_1")
    return parse_scenario(
        {
            "name": "chain16",
            "seed": 0,
            "workload": {"arrival": "poisson", "rate_per_s": 150.0, "requests": requests, "deadline_s": 1.0},
            "devices": {
                "flops_per_s": 4e9,
                "speed": {"kind": "markov", "factors": [1.0, 0.5], "mean_holding_s": [5.0, 1.0]},
            },
            "network": {
                "uplink": {"bandwidth_mbps": 100.0, "delay_s": 0.001},
                "hops": {"bandwidth": {"kind": "trace", "path": bw, "scale": 40.0}, "delay_s": 0.001},
            },
        }  # fmt: skip
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10^3..10^5 only")
    ap.add_argument("--policy", default="last-exit", help="last-exit sends every request through all 16 nodes")
    args = ap.parse_args()
    tr = synthetic_trace()
    pol = create_policy(args.policy, NODES)
    vec_sizes = [10**3, 10**4, 10**5] if args.quick else [10**4, 10**5, 10**6]
    des_sizes = [10**3, 3 * 10**3] if args.quick else [10**3, 10**4]

    print(f"16-node chain, policy {args.policy}, Markov speeds, HSDPA bandwidth traces on every hop")
    print("| engine | requests | wall s | requests/s | events | events/s | mean latency ms | mean exit |")
    print("|---|---|---|---|---|---|---|---|")
    des_t: dict[int, float] = {}
    des_rate = 0.0
    for r in des_sizes:
        res = simulate(scenario(r), tr, pol, engine="simpy")
        a = res.aggregates()
        des_t[r] = res.wall_s
        des_rate = a["events_per_s"]
        mean_exit = float(np.mean(res.records["exit_node"]))
        print(f"| simpy | {r:,} | {res.wall_s:.2f} | {r / res.wall_s:,.0f} | {a['events']:,} "
              f"| {a['events_per_s']:,.0f} | {a['latency_mean_s'] * 1e3:.1f} | {mean_exit:.2f} |")  # fmt: skip
    vec_t: dict[int, float] = {}
    vec_cpu: dict[int, float] = {}
    for r in vec_sizes:
        t0, c0 = time.perf_counter(), time.process_time()
        res = simulate(scenario(r), tr, pol, engine="vector")
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        vec_t[r] = total
        vec_cpu[r] = cpu
        a = res.aggregates()
        mean_exit = float(np.mean(res.records["exit_node"]))
        print(f"| vector | {r:,} | {total:.2f} (CPU {cpu:.2f}) | {r / total:,.0f} | - | - "
              f"| {a['latency_mean_s'] * 1e3:.1f} | {mean_exit:.2f} |")  # fmt: skip

    # both engines on one shared run
    r = des_sizes[0]
    v = simulate(scenario(r), tr, pol, engine="vector").records
    s = simulate(scenario(r), tr, pol, engine="simpy").records
    same_exit = bool(np.array_equal(v["exit_node"], s["exit_node"]))
    dmax = float(np.nanmax(np.abs(v["latency_s"] - s["latency_s"])))
    print(f"\nshared run of {r:,} requests: exits identical: {same_exit}; max |latency difference| = {dmax:.2e} s")

    sizes = sorted(vec_t)
    print("\ngrowth (time ratio for 10x the requests; 10 = linear):")
    for a_, b_ in zip(sizes, sizes[1:], strict=False):
        print(f"  vector {a_:>9,} -> {b_:>9,}: {vec_t[b_] / vec_t[a_]:.2f} (CPU time: {vec_cpu[b_] / vec_cpu[a_]:.2f})")
    ds = sorted(des_t)
    for a_, b_ in zip(ds, ds[1:], strict=False):
        print(f"  simpy  {a_:>9,} -> {b_:>9,}: {des_t[b_] / des_t[a_]:.2f} (x{b_ // a_} requests)")
    big = sizes[-1]
    per_req_des = des_t[ds[-1]] / ds[-1]
    print(f"\nSimPy: {des_rate:,.0f} events/s; 10^6 requests would take ~{per_req_des * 1e6:,.0f} s "
          f"(ratio to the 60 s target: {per_req_des * 1e6 / 60:.1f})")  # fmt: skip
    scale = 10**6 / big
    est = vec_t[big] * scale
    extra = "" if scale == 1 else f" (10^6 ~ {est:.1f} s)"
    print(f"vector: {big:,} requests in {vec_t[big]:.2f} s wall, {vec_cpu[big]:.2f} s CPU{extra}; "
          f"ratio to the 60 s target: {est / 60:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
