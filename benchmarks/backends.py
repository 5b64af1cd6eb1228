"""Node latency through each backend: ONNX Runtime fp32 and int8 against PyTorch, per segment.

What: the time of one node (segment K + exit K) of a 4-node WRN-16-2 (random initialisation: latency
does not depend on the weights) at batch 1 and 8, through the torch backend, the ONNX Runtime fp32
backend and the int8 backends (QDQ and QOperator forms), as the runtime calls them
(``backend.run(x)`` on numpy arrays).
How: every engine gets ONE intra-op thread (``torch.set_num_threads(1)``; ONNX Runtime
``intra_op_num_threads = inter_op_num_threads = 1``). ROUNDS rounds; in each, for every node and
batch size, one block of BLOCK calls per backend (order rotated every round), the block's median
kept; ratios are taken within a round (same machine load) and their median over rounds is printed.
Each node gets the activations the previous node really computes.
Targets at batch 1: ONNX fp32 <= 0.8x torch, int8 <= 0.6x torch (whole chain and per node).

    python benchmarks/backends.py [--rounds 7] [--block 60] [--batches 1,8] [--exporter dynamo] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distree.backends.export import export_model
from distree.backends.manifest import read_manifest
from distree.backends.onnxrt import OnnxBackend
from distree.backends.quantize import quantize_chain
from distree.backends.torch_backend import TorchBackend
from distree.models import create_model

TARGET_FP32 = 0.8
TARGET_INT8 = 0.6


def block_median(fn, x: np.ndarray, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block", type=int, default=60)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    ap.add_argument("--calibration", type=int, default=128, help="random calibration inputs for int8")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("wrn-16-2", num_nodes=4).eval()
    n = model.num_nodes
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((args.calibration, *model.input_shape)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="distree-bench-") as tmp:
        qdq_dir, qop_dir = Path(tmp) / "qdq", Path(tmp) / "qoperator"
        t0 = time.perf_counter()
        export_model(
            model,
            qdq_dir,
            checkpoint={"path": "random-init", "sha256": "0" * 64, "model": "wrn-16-2", "model_args": {}},
            classes=[str(i) for i in range(10)],
            normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
            exporter=args.exporter,
            calibration=calib,
            quant={"quant_format": "qdq"},
        )
        shutil.copytree(qdq_dir, qop_dir)
        for f in qop_dir.glob("*.int8.onnx"):
            f.unlink()
        m = read_manifest(qop_dir)
        quantize_chain(m, calib, quant_format="qoperator")
        m.save()
        print(f"exported and quantized in {time.perf_counter() - t0:.0f} s ({args.exporter} exporter)")
        kw = {"intra_op_threads": 1, "inter_op_threads": 1}
        engines = {
            "torch": [TorchBackend(model, i) for i in range(n)],
            "onnx-fp32": [OnnxBackend(qdq_dir, i, **kw) for i in range(n)],
            "int8-qdq": [OnnxBackend(qdq_dir, i, variant="int8", **kw) for i in range(n)],
            "int8-qoperator": [OnnxBackend(qop_dir, i, variant="int8", **kw) for i in range(n)],
        }
        names = list(engines)
        inputs: dict[int, list[np.ndarray]] = {}
        for b in batches:
            x = rng.standard_normal((b, *model.input_shape)).astype(np.float32)
            inputs[b] = []
            for be in engines["torch"]:
                inputs[b].append(x)
                x = be.run(x)[0] if not be.is_last else x
        for b in batches:  # warm-up
            for name in names:
                for i in range(n):
                    block_median(engines[name][i].run, inputs[b][i], 10)
        times = {(name, b, i): [] for name in names for b in batches for i in range(n)}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for b in batches:
                for i in range(n):
                    for name in order:
                        times[(name, b, i)].append(block_median(engines[name][i].run, inputs[b][i], args.block))
    res: dict = {"threads": 1, "rounds": args.rounds, "block": args.block, "exporter": args.exporter, "rows": []}
    print(
        f"\nWRN-16-2, 4 nodes, 1 intra-op thread per engine, {args.rounds} rounds x {args.block} calls per block; "
        "ms = median over rounds of the block medians; ratio = median over rounds of (backend / torch) in the round"
    )
    print("| batch | node | torch ms | " + " | ".join(f"{x} ms (x torch)" for x in names[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(names) - 1))
    summary: dict = {}
    for b in batches:
        for i in [*range(n), "all"]:
            nodes = range(n) if i == "all" else [i]
            per = {name: [sum(times[(name, b, k)][r] for k in nodes) for r in range(args.rounds)] for name in names}
            ratio = {
                name: statistics.median(a / t for a, t in zip(per[name], per["torch"], strict=True)) for name in names
            }
            ms = {name: statistics.median(per[name]) * 1e3 for name in names}
            label = "chain" if i == "all" else str(i + 1)
            cells = " | ".join(f"{ms[x]:.3f} ({ratio[x]:.2f}x)" for x in names[1:])
            print(f"| {b} | {label} | {ms['torch']:.3f} | {cells} |")
            res["rows"].append({"batch": b, "node": label, "ms": ms, "ratio_vs_torch": ratio})
            if i == "all":
                summary[b] = ratio
    if 1 in summary:
        s = summary[1]
        best = min(("int8-qdq", "int8-qoperator"), key=lambda k: s[k])
        print(
            f"\nbatch 1, whole chain: onnx fp32 {s['onnx-fp32']:.2f}x torch (target <= {TARGET_FP32}: "
            f"{'met' if s['onnx-fp32'] <= TARGET_FP32 else 'MISSED'}); int8 qdq {s['int8-qdq']:.2f}x, "
            f"qoperator {s['int8-qoperator']:.2f}x (target <= {TARGET_INT8}: "
            f"{'met' if s[best] <= TARGET_INT8 else 'MISSED'}; faster form here: {best})"
        )
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
