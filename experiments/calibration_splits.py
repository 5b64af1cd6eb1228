"""What an accuracy-drop target means on new data: calibration on random re-splits of real traces.

Pools the given traces (e.g. the validation and the test trace of one checkpoint), re-splits the
pooled samples at random ``--splits`` times into a calibration part (``--fraction``) and a scored
part, and for each policy and calibration mode records the held-out drop and FLOPs saving:

- ``cross-fit``: the default mode (expected held-out drop = the target);
- ``cross-fit-path-trace``: the same, choosing only along the thresholds cheapest on ``--path-trace``;
- ``in-sample``: the drop on the calibration part = the target (the earlier default);
- ``risk``: Learn-then-Test at ``--confidence`` (drop <= target with that probability), on the
  frontier path, and ``risk-interp`` on the earlier interpolated path; ``risk-path-trace`` with the
  candidates ordered on ``--path-trace`` (every sample of the calibration part tests).

Also the in-hindsight bound of each split: the largest saving the policy reaches on the scored
part at the target drop with thresholds chosen on that part's labels. Prints a table and writes
``calibration_splits.json`` and ``calibration_splits.png`` to ``--out``.

    python experiments/calibration_splits.py --traces runs/val.trace.safetensors runs/test.trace.safetensors \\
        --out runs/calib_splits
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from distree.calibration import check_splits, problem_for
from distree.calibration.search import Problem
from distree.policies import DEFAULT_POLICY, create_policy, list_policies
from distree.trace import load_trace

MODES: dict[str, dict[str, Any]] = {
    "cross-fit": {"method": "cross-fit"},
    "cross-fit-path-trace": {"method": "cross-fit"},  # fits only along the line of thresholds of --path-trace
    "in-sample": {"method": "in-sample"},
    "risk": {"risk_path": "frontier"},
    "risk-interp": {"risk_path": "interpolate"},
    "risk-path-trace": {"risk_path": "frontier"},  # candidates ordered on --path-trace, all of a part tests
}


def pooled_problem(name: str, traces: list[Any]) -> Problem:
    probs = [problem_for(create_policy(name, traces[0].num_nodes), t) for t in traces]
    for p in probs[1:]:
        if not np.allclose(p.cost, probs[0].cost):
            raise SystemExit("the traces have different exit costs: pool traces of one checkpoint only")
    return Problem(np.vstack([p.scores for p in probs]), np.vstack([p.correct for p in probs]), probs[0].cost)


def plot(rows: list[dict[str, Any]], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(12.0, 0.7 * len(rows)), 6.0), dpi=110)
    labels = [f"{r['policy']} / {r['mode']}" for r in rows]
    ax1.boxplot([r["drops_pp"] for r in rows], showmeans=True)
    ax1.set_xticks(range(1, len(rows) + 1), labels, rotation=90, fontsize=7)
    ax1.axhline(target, color="red", lw=1, ls="--", label=f"target {target:g} pp")
    ax1.set_ylabel("held-out accuracy drop (pp)")
    ax1.legend(fontsize=8)
    x = np.arange(len(rows))
    ax2.bar(x, [100 * r["summary"]["held_out_saving"]["mean"] for r in rows], color="tab:blue", label="mean saving")
    ax2.plot(
        x, [100 * r["hindsight_mean"] for r in rows], "k_", ms=18, mew=2, label=f"in-hindsight bound at {target:g} pp"
    )
    ax2.set_xticks(x, labels, rotation=90, fontsize=7)
    ax2.set_ylabel("held-out FLOPs saving vs last exit (%)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", nargs="+", type=Path, required=True, help="traces of one checkpoint, pooled")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--policies",
        default=f"confidence,distree,{DEFAULT_POLICY}",
        help="comma-separated registry names, or 'all' (every tunable deployable policy)",
    )
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    ap.add_argument("--target", type=float, default=0.5, help="accuracy-drop target (pp)")
    ap.add_argument("--confidence", type=float, default=0.9, help="risk modes: 1 - DELTA")
    ap.add_argument("--splits", type=int, default=50)
    ap.add_argument("--fraction", type=float, default=0.5, help="share of the pooled samples calibrated on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5, help="cross-fit modes: number of folds")
    ap.add_argument("--repeats", type=int, default=1, help="cross-fit modes: repeats of the folds")
    ap.add_argument(
        "--path-trace",
        type=Path,
        default=None,
        help="a trace of the same model on other samples (its training split): adds the *-path-trace modes",
    )
    a = ap.parse_args()

    traces = [load_trace(p) for p in a.traces]
    if len({t.num_nodes for t in traces}) != 1:
        raise SystemExit("the traces have different numbers of exits")
    if a.policies == "all":
        names = [n for n in list_policies(deployable_only=True) if create_policy(n, 2).tunable]
    else:
        names = [n.strip() for n in a.policies.split(",") if n.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.path_trace is None:
        modes = [m for m in modes if not m.endswith("path-trace")]  # they need the other samples
    path_trace = load_trace(a.path_trace) if a.path_trace is not None else None
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode {', '.join(bad)}; choose from {', '.join(MODES)}")
    n_total = sum(t.num_samples for t in traces)
    print(
        f"{len(traces)} traces pooled: {n_total} samples ({', '.join(str(t.meta.get('split')) for t in traces)}), "
        f"model {traces[0].meta.get('model')}, checkpoint {traces[0].meta.get('checkpoint')}; {a.splits} random "
        f"splits, calibrate on {a.fraction:g}, score on the rest; target {a.target:g} pp"
    )
    rows: list[dict[str, Any]] = []
    for name in names:
        prob = pooled_problem(name, traces)
        hind: np.ndarray | None = None
        for mode in modes:
            kw: dict[str, Any] = {"max_drop_pp": a.target, **MODES[mode]}
            if mode.startswith("risk"):
                kw["confidence"] = a.confidence
            if mode.startswith("cross-fit"):
                kw.update(folds=a.folds, repeats=a.repeats)
            if mode.endswith("path-trace"):
                assert path_trace is not None
                kw["path_prob"] = pooled_problem(name, [path_trace])
            t0 = time.perf_counter()
            res = check_splits(prob, a.splits, fraction=a.fraction, seed=a.seed, hindsight=hind is None, **kw)
            if hind is None:
                hind = res.hindsight  # the same splits for every mode (same seed): one bound per split
            assert hind is not None
            s = res.summary()
            rows.append(
                {
                    "policy": name,
                    "mode": mode,
                    "summary": s,
                    "drops_pp": res.drops_pp.tolist(),
                    "savings": res.savings.tolist(),
                    "hindsight": hind.tolist(),
                    "hindsight_mean": float(hind.mean()),
                    "violations": int(res.over_target().sum()),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(f"  {name} {mode}: {rows[-1]['seconds']:.1f}s", flush=True)
    header = (
        "| policy | mode | mean drop pp | p75 drop pp | p90 drop pp | mean saving % | in-hindsight bound % "
        "| gap to the bound, points | over target |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d, sv = r["summary"]["held_out_drop_pp"], r["summary"]["held_out_saving"]
        lines.append(
            f"| {r['policy']} | {r['mode']} | {d['mean']:+.3f} | {d['p75']:+.3f} | {d['p90']:+.3f} | "
            f"{100 * sv['mean']:.1f} | {100 * r['hindsight_mean']:.1f} | "
            f"{100 * (r['hindsight_mean'] - sv['mean']):.2f} | {r['violations']} / {a.splits} |"
        )
    print("\n".join(lines))
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "traces": [str(p) for p in a.traces],
        "trace_meta": [{k: v for k, v in t.meta.items() if k != "classes"} for t in traces],
        "num_samples": n_total,
        "splits": a.splits,
        "fraction": a.fraction,
        "target_pp": a.target,
        "confidence": a.confidence,
        "seed": a.seed,
        "folds": a.folds,
        "repeats": a.repeats,
    }
    (a.out / "calibration_splits.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (a.out / "calibration_splits.md").write_text("\n".join(lines) + "\n")
    plot(rows, a.target, a.out / "calibration_splits.png")
    print(
        f"wrote {a.out / 'calibration_splits.json'}, {a.out / 'calibration_splits.md'}, "
        f"{a.out / 'calibration_splits.png'}"
    )


if __name__ == "__main__":
    main()
