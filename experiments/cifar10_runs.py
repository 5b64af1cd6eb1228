"""Train several CIFAR-10 configurations of a 4-node WRN-16-2 side by side on one GPU.

Used for the exit-head and objective comparisons in docs/. A short probe (every run for a few
steps, concurrently) measures throughput under contention; the number of epochs is then chosen so
that all runs finish within ``--budget-s``. Each run writes a normal checkpoint directory.

    python experiments/cifar10_runs.py --data-dir DATA --out runs/cifar --budget-s 360
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    # name: (objective, head spec)
    "distree-pool4": ("distree", {"kind": "pool", "pool": 4, "hidden": 128}),
    "cekd-pool4": ("ce+kd", {"kind": "pool", "pool": 4, "hidden": 128}),
    "ce-pool4": ("ce", {"kind": "pool", "pool": 4, "hidden": 128}),
    "distree-pool1": ("distree", {"kind": "pool", "pool": 1, "hidden": 128}),
    "distree-conv8": ("distree", {"kind": "conv", "pool": 8, "channels": 64, "hidden": 128}),
}


def launch(name: str, args: argparse.Namespace, epochs: int, out: Path, extra: list[str]) -> subprocess.Popen:
    objective, head = RUNS[name]
    cmd = [
        sys.executable,
        "-m",
        "distree",
        "train",
        "--model",
        args.model,
        "--nodes",
        "4",
        "--dataset",
        "cifar10",
        "--data-dir",
        args.data_dir,
        "--epochs",
        str(epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--objective",
        objective,
        "--head",
        json.dumps(head),
        "--device",
        args.device,
        "--out",
        str(out / name),
        *extra,
    ]
    if args.amp:
        cmd.append("--amp")
    log = open(out / f"{name}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="runs/cifar")
    ap.add_argument("--model", default="wrn-16-2")
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--budget-s", type=float, default=360)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--min-epochs", type=int, default=8)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=None, help="Fixed epoch count (skips the probe).")
    args = ap.parse_args()
    names = args.runs.split(",")
    out = Path(args.out)
    probe_dir = out / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.epochs:
        procs = [launch(n, args, args.epochs, out, []) for n in names]
        for p in procs:
            p.wait()
        report(names, out, t0)
        return
    procs = [launch(n, args, 1, probe_dir, ["--max-steps-per-epoch", "60"]) for n in names]
    for p in procs:
        p.wait()
    probe_s = time.time() - t0
    ips = []
    for n in names:
        hist = json.loads((probe_dir / n / "history.json").read_text())
        ips.append(hist[-1]["images_per_s"])
    slowest = min(ips)
    epoch_s = 45000 / slowest + 2.0
    epochs = int(max(args.min_epochs, min(args.max_epochs, (args.budget_s - probe_s) / epoch_s)))
    print(
        f"probe {probe_s:.1f}s, images/s under contention {[round(x) for x in ips]}, "
        f"epoch ≈ {epoch_s:.1f}s -> {epochs} epochs",
        flush=True,
    )
    procs = [launch(n, args, epochs, out, []) for n in names]
    for p in procs:
        p.wait()
    report(names, out, t0)


def report(names: list[str], out: Path, t0: float) -> None:
    for n in names:
        hist = json.loads((out / n / "history.json").read_text()) if (out / n / "history.json").exists() else []
        last = hist[-1] if hist else {}
        print(
            n,
            "epochs",
            len(hist),
            "val acc",
            [round(a, 4) for a in last.get("val_acc", [])],
            "img/s",
            round(last.get("images_per_s", 0)),
            flush=True,
        )
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
