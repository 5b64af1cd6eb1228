"""The simulator's replica sweep against a loopback cluster with replicas: mean and p95 latency.

The chain of ``benchmarks/replicas.py`` (4 real node processes per replica set, small-cnn, last-exit
policy, emulated devices: tier 2 takes ``--slow-ms`` (40) per request, the others ``--fast-ms`` (5)), under
one Poisson stream at ``--rate``, with tier 2 at each of ``--counts`` replicas. The simulator (SimPy
engine, the times the requests really left the client, round robin over tier 2's replicas) gets,
from a calibration of each cluster at low load just before its loaded run (``--calibration``
sequential requests): every tier's service time as its nodes measure it (``compute_s``: mean and
coefficient of variation, a lognormal service), and one delay per link so that the simulated
unloaded latency equals the measured one (the transport and Python time of a hop). Nothing is fitted to the loaded runs.

Prints per replica count: mean and p95 latency of the runtime and the simulator and their ratios
(target: within 15 %).

    .venv/bin/python experiments/sim_vs_replicas.py [--rate 20] [--requests 500] [--counts 1,2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from replicas import make_checkpoint, offer, poisson, write_chain  # noqa: E402


def calibrate(spec, x: np.ndarray, n: int) -> tuple[list[float], list[float], float]:
    """Sequential requests: per-tier service seconds (the nodes' own compute_s, over every replica) and
    their coefficients of variation, and the mean unloaded latency."""
    from distree.runtime import ClusterClient, node_info

    with ClusterClient(spec.addresses(1)) as client:
        for i in range(10):
            client.infer(x[i % len(x)][None])
        lat = [client.infer(x[i % len(x)][None]).latency_s for i in range(n)]
    service, cv = [], []
    for k in range(1, 5):
        per = [json.loads(node_info(nd.address).stats_json)["recent"]["compute_s"] for nd in spec.replicas(k)]
        take = n // len(per) + 1
        recent = np.concatenate([np.array(r[-take:]) for r in per])
        service.append(float(recent.mean()))
        cv.append(float(recent.std() / recent.mean()))
    return service, cv, float(np.mean(lat))


def loaded_service(spec) -> list[float]:
    """Mean service seconds per tier as the nodes measured them during a run (for the report)."""
    from distree.runtime import node_info

    out = []
    for k in range(1, 5):
        xs = [np.mean(json.loads(node_info(n.address).stats_json)["recent"]["compute_s"]) for n in spec.replicas(k)]
        out.append(float(np.mean(xs)))
    return out


def simulate(model_cost, service: list[float], cv: list[float], link_delay_s: float, replicas: int,
             arrival: np.ndarray):  # fmt: skip
    from distree.policies import create_policy
    from distree.sim import build_cluster, run_simpy
    from distree.sim.scenario import parse_scenario
    from distree.sim.workload import Requests
    from distree.trace import Trace

    n = len(arrival)
    sc = parse_scenario(
        {
            "workload": {"arrival": "deterministic", "rate_per_s": 1.0},  # arrivals given below
            "devices": {
                "seconds": service[0],
                "nodes": [
                    {
                        "node": k + 1,
                        "seconds": s,
                        "service": "lognormal",
                        "service_cv": max(cv[k], 1e-3),
                        **({"replicas": replicas} if k == 1 else {}),
                    }
                    for k, s in enumerate(service)
                ],
            },
            "network": {
                "uplink": {"bandwidth_mbps": 1e5, "delay_s": link_delay_s},
                "hops": {"bandwidth_mbps": 1e5, "delay_s": link_delay_s},
            },
        }
    )
    cluster = build_cluster(sc, model_cost)
    trace = Trace(
        logits=np.zeros((1, 4, 10), np.float32),
        features=[np.zeros((1, 4), np.float32) for _ in range(4)],
        labels=np.zeros(1, np.int64),
        cost=model_cost,
    )
    reqs = Requests(arrival_s=arrival, sample=np.zeros(n, np.int64), deadline_s=np.full(n, np.inf))
    return run_simpy(cluster, trace, create_policy("last-exit", 4), reqs).aggregates()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--counts", default="1,2", help="replica counts of tier 2")
    ap.add_argument("--slow-ms", type=float, default=40.0)
    ap.add_argument("--fast-ms", type=float, default=5.0)
    ap.add_argument("--calibration", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from distree.checkpoint import load_checkpoint
    from distree.runtime import LocalCluster, node_info

    counts = [int(c) for c in a.counts.split(",")]
    nominal = [a.fast_ms, a.slow_ms, a.fast_ms, a.fast_ms]
    arrival = poisson(a.rate, a.requests, seed=7)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, policy, x = make_checkpoint(root)
        cost = load_checkpoint(ckpt)[0].cost_profile()
        for c in counts:
            spec = write_chain(root, f"r{c}", ckpt, policy, nominal, {2: c})
            with LocalCluster(spec, log_dir=root / f"logs{c}") as cluster:
                cluster.start(timeout_s=180)
                # in-situ calibration at low load, right before the loaded run (the machine's load drifts)
                service, cv, unloaded = calibrate(spec, x, a.calibration)
                real = offer(spec, x, arrival)
                during = loaded_service(spec)
                rows_per = [json.loads(node_info(n.address).stats_json)["counts"]["rows"] for n in spec.replicas(2)]
            delay = max(0.0, (unloaded - sum(service)) / 8)  # 4 links (uplink + 3 hops), there and back
            print(f"x{c} calibration: service ms per tier {[round(v * 1e3, 2) for v in service]} (cv "
                  f"{[round(v, 3) for v in cv]}), unloaded {unloaded * 1e3:.2f} ms -> link delay "
                  f"{delay * 1e3:.3f} ms; tier-2 rows per replica {rows_per}")  # fmt: skip
            # the simulator gets the times the requests really left the client (a loaded machine delays some)
            sim = simulate(cost, service, cv, delay, c, np.asarray(real["sent_s"]))
            row = {
                "replicas": c,
                "runtime_mean_ms": real["latency_mean_s"] * 1e3,
                "sim_mean_ms": sim["latency_mean_s"] * 1e3,
                "runtime_p95_ms": real["latency_p95_s"] * 1e3,
                "sim_p95_ms": sim["latency_p95_s"] * 1e3,
                "service_ms_calibration": [round(v * 1e3, 2) for v in service],
                "service_ms_during_run": [round(v * 1e3, 2) for v in during],
                "answered": real["answered"],
                "degraded": real["degraded"],
            }
            row["mean_ratio"] = row["sim_mean_ms"] / row["runtime_mean_ms"]
            row["p95_ratio"] = row["sim_p95_ms"] / row["runtime_p95_ms"]
            rows.append(row)
    print(f"\nPoisson {a.rate:g} req/s, {a.requests} requests; tier 2 {a.slow_ms:g} ms, others {a.fast_ms:g} ms")
    print(
        "| tier-2 replicas | runtime mean ms | sim mean ms | sim/runtime | runtime p95 ms | sim p95 ms | sim/runtime |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['runtime_mean_ms']:.1f} | {r['sim_mean_ms']:.1f} | {r['mean_ratio']:.3f} | "
              f"{r['runtime_p95_ms']:.1f} | {r['sim_p95_ms']:.1f} | {r['p95_ratio']:.3f} |")  # fmt: skip
    for r in rows:
        print(f"tier-2 x{r['replicas']}: service ms per tier measured by the nodes during the run "
              f"{r['service_ms_during_run']} (calibration: {r['service_ms_calibration']})")  # fmt: skip
    worst = max(max(abs(r["mean_ratio"] - 1), abs(r["p95_ratio"] - 1)) for r in rows)
    print(f"largest deviation: {worst * 100:.1f}% ({'within' if worst <= 0.15 else 'outside'} 15%)")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "args": vars(a) | {"json": str(a.json)}}, indent=2))


if __name__ == "__main__":
    main()
