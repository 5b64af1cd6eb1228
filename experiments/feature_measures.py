"""Feature-difference measures of the default policy, compared on validation (held out) and test.

Trains (or reuses) several seeds of a model, traces its val and test splits, and for each candidate
policy reports (averaged over the seeds):

- the held-out FLOPs saving on the validation trace at a held-out accuracy drop of 0.5 / 1 / 2 pp
  (2-fold, 6 repeats; ``distree.evaluation.selection``), the figure that picks a default;
- calibrated on the whole validation trace at <= 1 pp, the test drop and test saving.

Candidates that compare features coordinate by coordinate (``feat-l2``) only run when every exit
has the same feature width; they are reported as "n/a" otherwise.

    python experiments/feature_measures.py --out runs/measures/wrn-equal --model wrn-16-2 \\
        --model-args '{"head_budget": null}' --seeds 0 1 2 3 4 --epochs 2
    python experiments/feature_measures.py --out runs/measures/wrn-auto --model wrn-16-2 --seeds 0 1 2 3 4 --epochs 2
    python experiments/feature_measures.py --runs runs/cifar   # folders holding {val,test}.trace.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from distree.calibration import calibrate
from distree.evaluation.scoring import evaluate_policy
from distree.evaluation.selection import held_out_curve, saving_at_drop
from distree.models import parse_model_args
from distree.policies import create_policy
from distree.trace import load_trace, trace_checkpoint
from distree.training import TrainConfig, train

CANDIDATES: list[tuple[str, dict]] = [
    ("distree-conf", {"measure": "feat-l2", "alpha": 0.5}),
    ("distree-conf", {"measure": "feat-w2", "alpha": 0.25}),
    ("distree-conf", {"measure": "feat-w2", "alpha": 0.5}),
    ("distree-conf", {"measure": "feat-w2", "alpha": 1.0}),
    ("distree-conf", {"measure": "tv", "alpha": 0.5}),
    ("distree", {"measure": "feat-l2"}),
    ("distree", {"measure": "feat-w2"}),
    ("distree", {"measure": "tv"}),
    ("confidence", {}),
]
DROPS = (0.5, 1.0, 2.0)


def traces_for(args: argparse.Namespace, seed: int) -> tuple[Path, Path]:
    run = args.out / f"seed{seed}"
    val, test = run / "val.trace.safetensors", run / "test.trace.safetensors"
    if not test.is_file():
        cfg = TrainConfig(
            model=args.model,
            num_nodes=args.nodes,
            dataset=args.dataset,
            data_dir=args.data_dir,
            epochs=args.epochs,
            batch_size=64,
            lr=0.05,
            val_fraction=args.val_fraction,
            seed=seed,
            objective=args.objective,
            model_args=parse_model_args(args.model_args),
        )
        train(cfg, run)
        trace_checkpoint(run, "val").save(val)
        trace_checkpoint(run, "test").save(test)
    return val, test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="Folder for the trained seeds (seed<N>/ with checkpoint and traces).")
    ap.add_argument("--runs", type=Path, nargs="*", default=None, help="Use the traces in these folders instead.")
    ap.add_argument("--model", default="wrn-16-2")
    ap.add_argument("--model-args", default=None)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--objective", default="distree")
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    rows: dict[str, list[list[float]]] = {}
    accs = []
    if not args.runs and args.out is None:
        ap.error("give --out (train seeds) or --runs (existing traces)")
    pairs = (
        [(r / "val.trace.safetensors", r / "test.trace.safetensors") for r in args.runs]
        if args.runs
        else [traces_for(args, seed) for seed in args.seeds]
    )
    for seed, (vpath, tpath) in enumerate(pairs):
        val, test = load_trace(vpath), load_trace(tpath)
        accs.append(test.exit_accuracy())
        dims = {f.shape[1] for f in val.features}
        for name, params in CANDIDATES:
            key = f"{name} {json.dumps(params)}"
            if params.get("measure") == "feat-l2" and len(dims) > 1:
                rows.setdefault(key, [])
                continue
            pol = create_policy(name, val.num_nodes, **params)
            curve = held_out_curve(pol, val, np.linspace(0.0, 3.0, 13), folds=2, repeats=6, seed=seed)
            held = [100 * saving_at_drop(curve, d) for d in DROPS]
            m = evaluate_policy(calibrate(pol, val, max_drop_pp=1.0), test)
            rows.setdefault(key, []).append([*held, m.drop_pp, 100 * m.saving])
    acc = " / ".join(f"{100 * a:.1f}" for a in np.mean(accs, axis=0))
    what = ", ".join(map(str, args.runs)) if args.runs else f"{args.model} {args.model_args or ''} on {args.dataset}"
    print(f"{what}, {len(pairs)} runs; test acc % per exit: {acc}")
    print(f"feature widths per exit: {[f.shape[1] for f in val.features]}")
    print()
    print("| policy | held-out saving % at 0.5 / 1 / 2 pp (val) | test drop pp / test saving % (<= 1 pp on val) |")
    print("|---|---|---|")
    for key, vals in rows.items():
        if not vals:
            print(f"| {key} | n/a (unequal feature widths) | n/a |")
            continue
        a = np.mean(vals, axis=0)
        print(f"| {key} | {a[0]:.1f} / {a[1]:.1f} / {a[2]:.1f} | {a[3]:+.2f} / {a[4]:.1f} |")


if __name__ == "__main__":
    main()
