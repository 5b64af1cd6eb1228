"""Throughput with 2 replicas of the slowest tier against 1, at the same offered load, on loopback.

A 4-node chain of real ``distree serve`` processes (small-cnn, untrained: timing does not depend on
the weights), last-exit policy so that every request crosses every tier. Devices are emulated with
the spec's ``nominal_compute_ms`` (the node sleeps so a row takes that long; sleeping uses no CPU,
so the node processes sharing this machine's cores do not slow each other): tier 2 takes
``--slow-ms`` (20 ms: at most 50 req/s on one device), the others ``--fast-ms`` (2 ms). The client
offers a Poisson stream at ``--rate`` (90 req/s) to every ingress replica through one channel
(``ClusterClient``). Throughput = answered requests / (last answer - first send).

    .venv/bin/python benchmarks/replicas.py [--rate 90] [--requests 1000] [--slow-ms 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np


def make_checkpoint(root: Path) -> tuple[Path, Path, np.ndarray]:
    """An untrained 4-node small-cnn checkpoint, a last-exit policy file, and random inputs."""
    import torch

    from distree.checkpoint import save_checkpoint
    from distree.models import create_model
    from distree.policies import create_policy

    torch.manual_seed(0)
    model = create_model("small-cnn", num_nodes=4, num_classes=10, width=8)
    ckpt = save_checkpoint(model, root / "ckpt", classes=[str(i) for i in range(10)],
                           normalization={"mean": [0.5], "std": [0.25]})  # fmt: skip
    policy = create_policy("last-exit", 4).save(root / "last-exit.json")
    x = np.random.default_rng(0).normal(size=(64, *model.input_shape)).astype(np.float32)
    return ckpt, policy, x


def write_chain(root: Path, name: str, ckpt: Path, policy: Path, nominal_ms: list[float], replicas: dict[int, int]):
    """A spec: tier k computes ``nominal_ms[k-1]`` per row; ``replicas`` = {tier: count}."""
    from distree.runtime import load_spec
    from distree.runtime.cluster import free_ports
    from distree.runtime.spec_toml import spec_toml

    tiers = [k for k in range(1, 5) for _ in range(replicas.get(k, 1))]
    nodes = [
        {"address": f"127.0.0.1:{p}", "segment": k, "nominal_compute_ms": nominal_ms[k - 1]}
        for k, p in zip(tiers, free_ports(len(tiers)), strict=True)
    ]
    path = root / f"{name}.toml"
    path.write_text(spec_toml(ckpt, policy, nodes, compute_mode="inline"))
    return load_spec(path)


def poisson(rate: float, n: int, seed: int = 1) -> np.ndarray:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def offer(spec, x: np.ndarray, arrival_s: np.ndarray) -> dict[str, Any]:
    """Send the open-loop stream to every ingress replica; latency and throughput of the answers."""
    from distree.runtime import ClusterClient
    from distree.runtime.client import infer_open_loop

    xs = [x[i % len(x)][None] for i in range(len(arrival_s))]
    with ClusterClient(spec.addresses(1)) as client:
        for _ in range(5):  # warm the channel and the nodes
            client.infer(xs[0])
        t0 = time.perf_counter()
        sent: list[float] = []
        res = infer_open_loop(client, xs, arrival_s, rpc_timeout_s=300, sent_s=sent)
        wall = time.perf_counter() - t0
    ok = [r for r in res if not isinstance(r, grpc.RpcError)]
    lat = np.array([r.latency_s for r in ok])
    sent = sent[: len(res)]
    t_sent = np.asarray(sent)
    done = [t_sent[i] + r.latency_s for i, r in enumerate(res) if not isinstance(r, grpc.RpcError)]
    span = max(max(done) if done else wall, 1e-9)
    return {
        "sent_s": sent,
        "requests": len(res),
        "answered": len(ok),
        "degraded": int(sum(bool(r.degraded[0]) for r in ok)),
        "throughput_per_s": len(ok) / span,
        "latency_mean_s": float(lat.mean()),
        "latency_p95_s": float(np.percentile(lat, 95)),
        "latency_p99_s": float(np.percentile(lat, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=90.0, help="offered load, requests/s (Poisson)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--slow-ms", type=float, default=20.0, help="tier 2's emulated compute per request")
    ap.add_argument("--fast-ms", type=float, default=2.0, help="the other tiers' emulated compute")
    ap.add_argument("--quick", action="store_true", help="300 requests")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = ap.parse_args()
    n = 300 if a.quick else a.requests
    from distree.runtime import LocalCluster

    nominal = [a.fast_ms, a.slow_ms, a.fast_ms, a.fast_ms]
    arrivals = poisson(a.rate, n)
    out: dict[str, Any] = {"rate_per_s": a.rate, "requests": n, "nominal_ms": nominal}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt, policy, x = make_checkpoint(root)
        for reps in (1, 2):
            spec = write_chain(root, f"r{reps}", ckpt, policy, nominal, {2: reps})
            with LocalCluster(spec, log_dir=root / f"logs{reps}") as cluster:
                cluster.start(timeout_s=180)
                out[f"tier2_x{reps}"] = offer(spec, x, arrivals)
            r = out[f"tier2_x{reps}"]
            print(f"tier 2 x{reps}: {r['answered']}/{r['requests']} answered, {r['degraded']} degraded, "
                  f"throughput {r['throughput_per_s']:.1f} req/s, mean {r['latency_mean_s'] * 1e3:.1f} ms, "
                  f"p95 {r['latency_p95_s'] * 1e3:.1f} ms")  # fmt: skip
    ratio = out["tier2_x2"]["throughput_per_s"] / out["tier2_x1"]["throughput_per_s"]
    out["throughput_ratio"] = ratio
    cap1 = 1000.0 / a.slow_ms
    print(f"offered {a.rate:g} req/s; one tier-2 device serves at most {cap1:.0f} req/s")
    print(f"throughput with 2 replicas of tier 2 / with 1: {ratio:.2f}x (ideal {min(a.rate, 2 * cap1) / cap1:.2f}x)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
