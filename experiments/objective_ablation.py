"""The training-objective ablation at the policy level: what each objective's exits are worth to a policy.

For each checkpoint (the same model trained with ``ce``, ``ce+kd`` and ``distree``), the per-exit test
accuracy and, for each policy, the held-out FLOPs saving and drop of the default calibration
(cross-fit, ``--target`` pp) over ``--splits`` random re-splits of validation + test pooled (the same
procedure as ``experiments/calibration_splits.py``), plus the in-hindsight bound of each split (the
best saving at the target with thresholds chosen on the scored part's labels).

Traces are made with ``distree trace`` when ``--traces-dir`` does not hold them yet
(``<name>.val.trace.safetensors``, ``<name>.test.trace.safetensors``; the name is the checkpoint
folder's). Writes ``ablation.json``, ``ablation.md`` and ``ablation.png`` to ``--out``.

    python experiments/objective_ablation.py --checkpoints checkpoints/wrn16-1-cifar10-ce \\
        checkpoints/wrn16-1-cifar10-distree --data-dir DATA --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from distree.calibration import check_splits
from distree.policies import DEFAULT_POLICY
from distree.trace import load_trace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_splits import pooled_problem  # noqa: E402


def ensure_traces(ckpt: Path, traces_dir: Path, data_dir: str | None, limit: int | None) -> list[Path]:
    """The checkpoint's validation and test traces, traced now if they are not in ``traces_dir``."""
    out = []
    for split in ("val", "test"):
        f = traces_dir / f"{ckpt.name}.{split}.trace.safetensors"
        if not f.exists():
            cmd = [sys.executable, "-m", "distree", "trace", "--checkpoint", str(ckpt), "--split", split]
            cmd += ["--out", str(f), *(["--data-dir", data_dir] if data_dir else [])]
            cmd += ["--limit", str(limit)] if limit else []
            print(f"$ {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True, capture_output=True)
        out.append(f)
    return out


def objective_of(ckpt: Path) -> str:
    cfg = ckpt / "train_config.json"
    return str(json.loads(cfg.read_text()).get("objective", "?")) if cfg.exists() else "?"


def plot(rows: list[dict[str, Any]], policies: list[str], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for r in rows:
        ax1.plot(range(1, len(r["test_accuracy"]) + 1), [100 * a for a in r["test_accuracy"]], "o-", label=r["label"])
    ax1.set_xlabel("exit")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_xticks(range(1, len(rows[0]["test_accuracy"]) + 1))
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    w = 0.8 / len(rows)
    x = np.arange(len(policies))
    for i, r in enumerate(rows):
        m = [100 * r["policies"][p]["saving_mean"] for p in policies]
        sd = [100 * r["policies"][p]["saving_sd"] for p in policies]
        ax2.bar(x + (i - (len(rows) - 1) / 2) * w, m, w, yerr=sd, capsize=3, label=r["label"])
    ax2.set_xticks(x, policies, fontsize=8)
    ax2.set_ylabel(f"held-out FLOPs saving at {target:g} pp (%)")
    ax2.legend(fontsize=8)
    fig.suptitle("Training objective: exits and the savings of the calibrated policies (mean ± sd over splits)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", type=Path, required=True, help="one model, several objectives")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--traces-dir", type=Path, default=None, help="where traces are read / written (default: --out)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--policies", default=f"confidence,{DEFAULT_POLICY},distree")
    ap.add_argument("--target", type=float, default=0.5, help="accuracy-drop target (pp)")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=0.5, help="share of the pooled samples calibrated on")
    ap.add_argument("--limit", type=int, default=None, help="trace only the first N samples of each split")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    a.out.mkdir(parents=True, exist_ok=True)
    tdir = a.traces_dir or a.out
    tdir.mkdir(parents=True, exist_ok=True)
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    rows: list[dict[str, Any]] = []
    for ckpt in a.checkpoints:
        t0 = time.perf_counter()
        traces = [load_trace(p) for p in ensure_traces(ckpt, tdir, a.data_dir, a.limit)]
        test = traces[1]
        row: dict[str, Any] = {
            "checkpoint": str(ckpt),
            "label": f"{objective_of(ckpt)} ({ckpt.name})",
            "objective": objective_of(ckpt),
            "test_accuracy": [float(x) for x in test.correct.mean(axis=0)],
            "samples": sum(t.num_samples for t in traces),
            "policies": {},
        }
        for name in policies:
            res = check_splits(
                pooled_problem(name, traces),
                a.splits,
                fraction=a.fraction,
                seed=a.seed,
                hindsight=True,
                max_drop_pp=a.target,
                method="cross-fit",
            )
            assert res.hindsight is not None
            row["policies"][name] = {
                "saving_mean": float(res.savings.mean()),
                "saving_sd": float(res.savings.std(ddof=1)) if a.splits > 1 else 0.0,
                "drop_mean_pp": float(res.drops_pp.mean()),
                "drop_p75_pp": float(np.percentile(res.drops_pp, 75)),
                "hindsight_mean": float(res.hindsight.mean()),
                "savings": res.savings.tolist(),
                "drops_pp": res.drops_pp.tolist(),
            }
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(f"  {row['label']}: {row['seconds']:.0f}s", flush=True)

    n_exits = len(rows[0]["test_accuracy"])
    lines = [
        "| objective | test accuracy % exits 1-"
        + str(n_exits)
        + " | "
        + " | ".join(f"{p}: saving % (drop pp)" for p in policies)
        + " |",
        "|---|---|" + "---:|" * len(policies),
    ]
    for r in rows:
        acc = " / ".join(f"{100 * x:.2f}" for x in r["test_accuracy"])
        cells = " | ".join(
            f"{100 * q['saving_mean']:.1f} ± {100 * q['saving_sd']:.1f} ({q['drop_mean_pp']:+.2f}); "
            f"bound {100 * q['hindsight_mean']:.1f}"
            for q in (r["policies"][p] for p in policies)
        )
        lines.append(f"| {r['label']} | {acc} | {cells} |")
    table = "\n".join(lines)
    print(
        f"{a.splits} random re-splits of validation + test pooled, calibrate (cross-fit, {a.target:g} pp) on "
        f"{a.fraction:g}, score on the rest; mean ± sd saving (mean held-out drop); in-hindsight bound\n{table}"
    )
    meta = {"splits": a.splits, "fraction": a.fraction, "target_pp": a.target, "seed": a.seed, "limit": a.limit}
    (a.out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (a.out / "ablation.md").write_text(table + "\n")
    plot(rows, policies, a.target, a.out / "ablation.png")
    print(f"wrote {a.out / 'ablation.json'}, {a.out / 'ablation.md'}, {a.out / 'ablation.png'}")


if __name__ == "__main__":
    main()
