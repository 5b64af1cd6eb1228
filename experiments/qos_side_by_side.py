"""The latency budget (QoS) on fluctuating devices: the simulator and a real loopback cluster, side by side.

One scenario, run twice per policy and deadline:

- **simulator**: 4 nodes whose nominal compute follows the checkpoint's FLOPs (the whole chain takes
  ``--chain-ms`` at full speed), each with a two-state Markov speed (full speed, or ``--slow`` of it,
  mean holding ``--hold-s``), Poisson arrivals at ``--rate`` per second, every request with the same
  deadline; the test trace gives each request's exits;
- **runtime**: 4 ``distree serve`` processes on loopback (``LocalCluster``) emulating the same devices
  (``nominal_compute_ms`` per node + the same Markov speed spec: each node computes for real, then
  waits out the rest of the emulated time), the same arrival times and the same test images, sent
  open loop with the deadline as the request's QoS ``timeout``.

The Markov chains run independently in the two (and per node): the comparison is of the statistics,
not request by request. Links: loopback in the runtime; 1 Gbit/s + 0.3 ms per hop in the simulator.
Prints per policy and deadline: accuracy, FLOPs saving, p95 latency, deadline misses and QoS exits,
simulator vs runtime, and writes ``qos.json`` and ``qos.png``.

    python experiments/qos_side_by_side.py --checkpoint checkpoints/wrn16-1-cifar10-distree --data-dir DATA \\
        --test-trace runs/test.trace.safetensors --policy runs/policies/distree-conf.json --out runs/qos
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from distree.checkpoint import read_sidecar
from distree.data import normalize
from distree.policies import create_policy, load_policy
from distree.runtime import ClusterClient, LocalCluster, load_spec
from distree.runtime.client import infer_open_loop
from distree.runtime.cluster import free_ports
from distree.runtime.spec_toml import spec_toml
from distree.sim import parse_scenario, simulate
from distree.sim.workload import make_requests
from distree.trace import load_trace
from distree.trace.record import checkpoint_split


def scenario(args: argparse.Namespace, flops_per_s: float, deadline_s: float) -> Any:
    return parse_scenario(
        {
            "name": f"qos-{deadline_s * 1000:.0f}ms",
            "seed": args.seed,
            "workload": {
                "arrival": "poisson",
                "rate_per_s": args.rate,
                "requests": args.requests,
                "deadline_s": deadline_s,
                "samples": "random",
            },  # fmt: skip
            "devices": {"flops_per_s": flops_per_s, "speed": markov(args)},
            "network": {
                "uplink": {"bandwidth_mbps": 1000.0, "delay_s": 0.0003},
                "hops": {"bandwidth_mbps": 1000.0, "delay_s": 0.0003},
            },
        }
    )


def markov(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": "markov", "factors": [1.0, args.slow], "mean_holding_s": [args.hold_s, args.hold_s / 2]}


def summarize(correct: np.ndarray, exit_node: np.ndarray, latency: np.ndarray, qos: np.ndarray | None,
              deadline_s: float, rel_flops: np.ndarray) -> dict[str, float]:  # fmt: skip
    ok = np.isfinite(latency)
    return {
        "accuracy": float(correct.mean()),
        "saving": float(1.0 - rel_flops[exit_node - 1].mean()),
        "p95_ms": float(np.percentile(latency[ok], 95) * 1000) if ok.any() else float("nan"),
        "miss": float(np.mean(~ok | (latency > deadline_s))),
        "qos_exit": float(np.mean(qos)) if qos is not None else float("nan"),
        "lost": int((~ok).sum()),
    }


def run_runtime(
    spec_path: Path, xs: list[np.ndarray], arrival: np.ndarray, deadline_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exit node, latency s (nan if failed), degraded) of each request on the running cluster."""
    spec = load_spec(spec_path)
    with ClusterClient(spec.addresses(1)) as client:
        for x in xs[:20]:  # warm-up: every node has computed and connected before the timed run
            client.infer(x, deadline_s=10.0)
        res = infer_open_loop(client, xs, arrival, deadline_s=deadline_s)
    ex = np.array([getattr(r, "exit_node", [0])[0] for r in res], dtype=np.int64)
    lat = np.array([getattr(r, "latency_s", float("nan")) for r in res], dtype=np.float64)
    deg = np.array([bool(getattr(r, "degraded", [True])[0]) for r in res])
    return ex, lat, deg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--test-trace", type=Path, required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--policy", action="append", default=[], help="policy file (repeat); last-exit is always run")
    ap.add_argument("--deadlines-ms", type=float, nargs="+", default=[60.0, 90.0, 150.0])
    ap.add_argument("--chain-ms", type=float, default=60.0, help="all 4 nodes at full speed")
    ap.add_argument("--slow", type=float, default=0.4, help="speed factor of the slow Markov state")
    ap.add_argument("--hold-s", type=float, default=2.0, help="mean time in the fast state (slow: half)")
    ap.add_argument("--rate", type=float, default=8.0, help="Poisson arrivals per second")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    trace = load_trace(args.test_trace)
    cost = trace.cost
    flops_per_s = cost.last_exit_cost() / (args.chain_ms / 1000.0)
    rel = cost.exit_cost() / cost.last_exit_cost()
    side = read_sidecar(args.checkpoint)
    ds = checkpoint_split(side, "test", data_dir=args.data_dir, checkpoint=args.checkpoint)
    per_node_ms = [1000.0 * (s + e) / flops_per_s for s, e in zip(cost.segment_flops, cost.exit_flops, strict=True)]
    files = [*args.policy]
    last = args.out / "last-exit.json"
    create_policy("last-exit", trace.num_nodes).save(last)
    files.append(str(last))
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for pf in files:
        policy = load_policy(pf)
        ports = free_ports(trace.num_nodes)
        nodes = [{"address": f"127.0.0.1:{p}", "nominal_compute_ms": round(ms, 3), "speed": markov(args)}
                 for p, ms in zip(ports, per_node_ms, strict=True)]  # fmt: skip
        spec_path = args.out / f"{Path(pf).stem}.toml"
        spec_path.write_text(spec_toml(args.checkpoint.resolve(), Path(pf).resolve(), nodes, threads=1))
        with LocalCluster(load_spec(spec_path)) as cluster:
            cluster.start()
            for d_ms in args.deadlines_ms:
                sc = scenario(args, flops_per_s, d_ms / 1000.0)
                sim = simulate(sc, trace, policy).records
                s_sum = summarize(sim["correct"].astype(bool), sim["exit_node"], sim["latency_s"], sim["qos"],
                                  d_ms / 1000.0, rel)  # fmt: skip
                reqs = make_requests(sc.workload, sc.seed, trace.num_samples)
                idx = trace.sample_index[reqs.sample]  # dataset rows of the traced samples
                xs = [normalize(ds.images[i : i + 1], ds.mean, ds.std).numpy() for i in idx]
                ex, lat, deg = run_runtime(spec_path, xs, reqs.arrival_s, d_ms / 1000.0)
                ok = ex > 0
                correct = np.zeros(ex.size, dtype=bool)
                correct[ok] = trace.correct[reqs.sample[ok], ex[ok] - 1]
                r_sum = summarize(correct, np.where(ok, ex, trace.num_nodes), lat, None, d_ms / 1000.0, rel)
                r_sum["degraded"] = float(deg.mean())
                rows.append({"policy": policy.name, "file": str(pf), "deadline_ms": d_ms, "sim": s_sum,
                             "runtime": r_sum})  # fmt: skip
                print(f"{policy.name:>14} {d_ms:5.0f} ms  sim: acc {100 * s_sum['accuracy']:.2f}% "
                      f"saved {100 * s_sum['saving']:.1f}% miss {100 * s_sum['miss']:.1f}%  |  runtime: acc "
                      f"{100 * r_sum['accuracy']:.2f}% saved {100 * r_sum['saving']:.1f}% miss "
                      f"{100 * r_sum['miss']:.1f}%  ({time.perf_counter() - t_start:.0f} s)", flush=True)  # fmt: skip
    print_table(rows)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (args.out / "qos.json").write_text(json.dumps({"args": meta, "per_node_ms": per_node_ms, "rows": rows}, indent=1))
    plot(rows, args.out / "qos.png")
    print(f"wrote {args.out / 'qos.json'} and {args.out / 'qos.png'}")


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| policy | deadline ms | acc % sim / rt | saved % sim / rt | p95 ms sim / rt | miss % sim / rt "
          "| QoS exits % sim |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s, t = r["sim"], r["runtime"]
        print(f"| {r['policy']} | {r['deadline_ms']:.0f} | {100 * s['accuracy']:.2f} / {100 * t['accuracy']:.2f} | "
              f"{100 * s['saving']:.1f} / {100 * t['saving']:.1f} | {s['p95_ms']:.0f} / {t['p95_ms']:.0f} | "
              f"{100 * s['miss']:.1f} / {100 * t['miss']:.1f} | {100 * s['qos_exit']:.1f} |")  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for pol in dict.fromkeys(r["policy"] for r in rows):
        rs = [r for r in rows if r["policy"] == pol]
        d = [r["deadline_ms"] for r in rs]
        panels = [(axes[0], "accuracy", "accuracy %"), (axes[1], "miss", "deadline miss %"),
                  (axes[2], "saving", "FLOPs saved %")]  # fmt: skip
        for ax, key, label in panels:
            (line,) = ax.plot(d, [100 * r["sim"][key] for r in rs], "--o", label=f"{pol} (sim)")
            ax.plot(d, [100 * r["runtime"][key] for r in rs], "-s", color=line.get_color(), label=f"{pol} (runtime)")
            ax.set_xlabel("deadline ms")
            ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
