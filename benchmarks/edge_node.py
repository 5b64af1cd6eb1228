"""Serving nodes on ONNX Runtime against torch nodes: memory per node and end-to-end latency of a chain.

What: three 4-node loopback clusters of the same WRN-16-2 (random initialisation: memory and latency do
not depend on the weights) with the last-exit policy (every request runs all four nodes): torch nodes,
ONNX Runtime fp32 nodes and int8 nodes. Each node process has one compute thread (spec ``threads = 1``).
How: after a warm-up, ROUNDS rounds; in each, one block of BLOCK sequential batch-1 requests per cluster
(order rotated every round), the block's median kept; latency ratios are taken within a round (same
machine load) and their median over rounds is printed. RSS (VmRSS) of every serving node process is
read after the last round. Targets: RSS of an ONNX node <= 0.35x a torch node's.

    python benchmarks/edge_node.py [--rounds 5] [--block 40] [--model wrn-16-2] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distree.backends.export import export_model
from distree.backends.manifest import checkpoint_sha256
from distree.checkpoint import save_checkpoint
from distree.models import create_model
from distree.policies import create_policy
from distree.runtime import ClusterClient, LocalCluster, load_spec
from distree.runtime.cluster import free_ports
from distree.runtime.spec_toml import spec_toml

KINDS = ("torch", "onnx", "onnx-int8")
TARGET_RSS = 0.35


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def block_median(client: ClusterClient, x: np.ndarray, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.infer(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=40)
    ap.add_argument("--model", default="wrn-16-2")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(args.model, num_nodes=4).eval()
    c = model.input_shape[0]
    norm = {"mean": [0.5] * c, "std": [0.25] * c}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="distree-edge-") as tmp:
        root = Path(tmp)
        ck = save_checkpoint(model, root / "ck", classes=[str(i) for i in range(10)], normalization=norm)
        print("exporting to ONNX (fp32 + int8)...", flush=True)
        export_model(
            model,
            root / "onnx",
            checkpoint={"path": str(ck), "sha256": checkpoint_sha256(ck), "model": args.model, "model_args": {}},
            classes=[str(i) for i in range(10)],
            normalization=norm,
            calibration=rng.standard_normal((64, *model.input_shape)).astype(np.float32),
        )
        policy = create_policy("last-exit", 4).save(root / "last-exit.json")
        clusters: dict[str, LocalCluster] = {}
        try:
            for kind in KINDS:
                nodes = [{"address": f"127.0.0.1:{p}", "segment": k + 1} for k, p in enumerate(free_ports(4))]
                path = root / f"{kind}.toml"
                extra = {} if kind == "torch" else {"backend": kind, "onnx_dir": str(root / "onnx")}
                path.write_text(spec_toml(ck, policy, nodes, threads=1, **extra))
                print(f"starting the {kind} cluster...", flush=True)
                clusters[kind] = LocalCluster(load_spec(path), log_dir=root / f"{kind}-logs").start(timeout_s=180)
            x = rng.integers(0, 256, (1, *model.input_shape), dtype=np.uint8)
            clients = {k: ClusterClient(cl.spec.nodes[0].address) for k, cl in clusters.items()}
            for cl in clients.values():
                for _ in range(20):
                    cl.infer(x)
            rounds: list[dict[str, float]] = []
            for r in range(args.rounds):
                order = KINDS[r % 3 :] + KINDS[: r % 3]
                rounds.append({k: block_median(clients[k], x, args.block) for k in order})
                print(
                    f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in rounds[-1].items())
                )
            rss = {k: [rss_mb(p.pid) for _, p in sorted(cl.procs.items())] for k, cl in clusters.items()}
            for cl in clients.values():
                cl.close()
        finally:
            for cl in clusters.values():
                cl.stop(timeout_s=10)
    lat = {k: statistics.median(r[k] for r in rounds) for k in KINDS}
    ratio = {k: statistics.median(r[k] / r["torch"] for r in rounds) for k in KINDS}
    rss_ratio = {k: [o / t for o, t in zip(rss[k], rss["torch"], strict=True)] for k in KINDS}
    print(f"\n{args.model}, 4 nodes on loopback, batch 1, last-exit policy, {torch.get_num_threads()} thread per node")
    print(f"{'backend':<10} {'e2e median':>11} {'/ torch':>8}   RSS per node (MB)          RSS / torch")
    for k in KINDS:
        mem = " ".join(f"{m:6.0f}" for m in rss[k])
        rr = " ".join(f"{v:4.2f}" for v in rss_ratio[k])
        print(f"{k:<10} {lat[k] * 1e3:>8.2f} ms {ratio[k]:>7.2f}x   {mem}   {rr}")
    worst = max(max(rss_ratio["onnx"]), max(rss_ratio["onnx-int8"]))
    print(f"\nRSS of an ONNX node / a torch node: at most {worst:.2f} (target <= {TARGET_RSS})")
    if args.out:
        args.out.write_text(
            json.dumps({"latency_s": lat, "ratio": ratio, "rss_mb": rss, "rss_ratio": rss_ratio}, indent=2)
        )


if __name__ == "__main__":
    main()
