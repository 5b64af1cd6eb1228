"""How much each exit signal says about "this exit's answer is right", per node, on real traces.

For every node that decides (1..N-1) and every signal an exit policy can use there, the ROC AUC of
the signal for two events: the exit's answer is correct, and it equals the last exit's answer (what
an early exit must preserve for the accuracy drop to stay small). AUC 0.5 = no information; below
0.5 the signal points the wrong way. Signals:

- ``confidence`` (top softmax probability), ``margin`` (top-1 minus top-2), ``neg-entropy``;
- ``pred-tv`` / ``pred-js``: 1 - the difference of consecutive exits' softmax outputs (the default
  DistrEE measure, docs/policies.md);
- ``feat-l2``, ``feat-cos``: the raw feature vectors of consecutive exits (only where widths match);
  ``feat-w2``: 1 - the quantile (Wasserstein-2) distance of their entry distributions, any widths;
- ``feat-aligned``: the feature difference measured in one space: a ridge map ``A`` from exit i-1's
  features to exit i's, fitted on the *other* trace (validation when scoring test), then
  1 - ||A f_{i-1} - f_i|| / (||A f_{i-1}|| + ||f_i||): how much the representation still changes
  beyond what the previous exit already predicted.

Then the policy-level check: held-out FLOPs saving at a 0.5 pp held-out accuracy drop of each policy
on the pooled validation + test traces, over ``--repeats`` random 2-fold re-splits (calibrate on one
half, score on the other; the curve's saving interpolated at 0.5 pp).

    python experiments/exit_signals.py --val runs/val.trace.safetensors --test runs/test.trace.safetensors \\
        --out runs/exit_signals
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from distree.evaluation.selection import held_out_curve, held_out_saving_at
from distree.policies import _measures as m
from distree.policies import create_policy
from distree.trace import load_trace
from distree.trace.format import Trace

POLICIES: list[tuple[str, dict]] = [
    ("confidence", {}),
    ("entropy", {}),
    ("distree", {"measure": "tv"}),
    ("distree", {"measure": "feat-w2"}),
    ("distree-conf", {}),
    ("similarity", {}),
    ("patience", {}),
]


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``positive`` (Mann-Whitney, ties averaged); nan if one class."""
    pos = positive.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ridge_map(src: np.ndarray, dst: np.ndarray, lam: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising ||src W + b - dst||^2 + lam ||W||^2: (F_src, F_dst), (F_dst,)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    x, y = src - mu_s, dst - mu_d  # (n, Fs), (n, Fd)
    w = np.linalg.solve(x.T @ x + lam * len(x) * np.eye(x.shape[1]), x.T @ y)
    return w, mu_d - mu_s @ w


def signals(t: Trace, node: int, fit: Trace) -> dict[str, np.ndarray]:
    """Every signal at ``node`` (0-based, >= 0) of trace ``t``; ``fit`` is the trace the ridge map is fitted on."""
    p = t.probs[:, node].astype(np.float64)  # (n, K)
    top2 = np.sort(p, axis=-1)[:, -2:]
    out = {"confidence": m.max_prob(p), "margin": top2[:, 1] - top2[:, 0], "neg-entropy": 1.0 - m.norm_entropy(p)}
    if node == 0:
        return out
    q = t.probs[:, node - 1].astype(np.float64)
    f, g = t.features[node].astype(np.float64), t.features[node - 1].astype(np.float64)  # (n, F_i), (n, F_i-1)
    out["pred-tv"] = 1.0 - m.total_variation(q, p)
    out["pred-js"] = 1.0 - m.js(q, p)
    if f.shape[1] == g.shape[1]:
        out["feat-l2"] = 1.0 - m.rel_l2(g, f)
        out["feat-cos"] = m.cosine_sim(g, f)
    out["feat-w2"] = 1.0 - m.quantile_w2(m.sort_rows(g), m.sort_rows(f))
    w, b = ridge_map(fit.features[node - 1].astype(np.float64), fit.features[node].astype(np.float64))
    out["feat-aligned"] = 1.0 - m.rel_l2(g @ w + b, f)
    return out


def auc_table(t: Trace, fit: Trace) -> list[dict]:
    last = t.predictions[:, -1]
    rows = []
    for node in range(t.num_nodes - 1):
        correct = t.correct[:, node]
        agrees = t.predictions[:, node] == last
        for name, s in signals(t, node, fit).items():
            rows.append({"node": node + 1, "signal": name, "auc_correct": auc(s, correct), "auc_agree": auc(s, agrees)})
    return rows


def concat(a: Trace, b: Trace) -> Trace:
    """One trace of ``a``'s and ``b``'s samples (same model: same exits, widths and cost profile)."""
    return Trace(
        logits=np.concatenate([a.logits, b.logits]),
        features=[np.concatenate([x, y]) for x, y in zip(a.features, b.features, strict=True)],
        labels=np.concatenate([a.labels, b.labels]),
        cost=a.cost,
        meta=dict(a.meta),
    )


def policy_savings(pool: Trace, repeats: int, drop_pp: float) -> list[dict]:
    targets = np.linspace(0.0, 2.0 * drop_pp + 0.5, 9)
    rows = []
    for name, params in POLICIES:
        policy = create_policy(name, pool.num_nodes, **params)
        per = []
        for r in range(repeats):  # one curve per re-split seed: the spread over splits
            curve = held_out_curve(policy, pool, targets, folds=2, repeats=1, seed=r)
            per.append(held_out_saving_at(curve, drop_pp))
        label = name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")
        rows.append({"policy": label, "saving_mean": float(np.mean(per)), "saving_std": float(np.std(per)), "per": per})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["signal"] for r in rows))
    nodes = sorted({r["node"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(nodes)
    for j, node in enumerate(nodes):
        vals = [next((r["auc_correct"] for r in rows if r["node"] == node and r["signal"] == s), np.nan) for s in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"node {node}")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)) + width * (len(nodes) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylabel("AUC for 'exit answer correct'")
    ax.set_ylim(0.3, 1.0)
    ax.legend(ncol=len(nodes), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--drop-pp", type=float, default=0.5)
    args = ap.parse_args()
    val, test = load_trace(args.val), load_trace(args.test)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = auc_table(test, fit=val)
    print("AUC on the test trace (ridge map fitted on validation): correct / agrees with the last exit")
    names = list(dict.fromkeys(r["signal"] for r in rows))
    nodes = sorted({r["node"] for r in rows})
    print(f"| signal | {' | '.join(f'node {k}' for k in nodes)} |")
    print("|---" * (len(nodes) + 1) + "|")
    for s in names:
        cells = []
        for k in nodes:
            r = next((r for r in rows if r["node"] == k and r["signal"] == s), None)
            cells.append("n/a" if r is None else f"{r['auc_correct']:.3f} / {r['auc_agree']:.3f}")
        print(f"| {s} | {' | '.join(cells)} |")
    plot(rows, args.out / "exit_signals_auc.png")
    pol = policy_savings(concat(val, test), args.repeats, args.drop_pp)
    print(f"\nheld-out FLOPs saving at a {args.drop_pp} pp held-out drop, val+test pooled, {args.repeats} re-splits:")
    print("| policy | saving % (mean ± sd) |\n|---|---|")
    for r in pol:
        print(f"| {r['policy']} | {100 * r['saving_mean']:.1f} ± {100 * r['saving_std']:.1f} |")
    (args.out / "exit_signals.json").write_text(json.dumps({"auc": rows, "policies": pol}, indent=1))
    print(f"\nwrote {args.out / 'exit_signals.json'} and {args.out / 'exit_signals_auc.png'}")


if __name__ == "__main__":
    main()
