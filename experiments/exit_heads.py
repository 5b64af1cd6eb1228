"""Exit-head size trade-off on CIFAR-10: head FLOPs vs exit accuracy vs achievable compute saving.

For each trained run (same WRN-16-2, 4 nodes, objective and epochs; only the exit head differs)
this reads its val and test traces and prints: head FLOPs as % of the segment it follows, per-exit
test accuracy, and the compute saving of a max-softmax confidence rule (one shared threshold,
chosen on val as the cheapest with <= 0.5 pp accuracy drop vs the last exit, scored on test), with
the visited heads' FLOPs counted.

    python experiments/exit_heads.py runs/cifar/traces distree-pool1 distree-pool4 distree-conv8
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from distree.policies import create_policy
from distree.trace import load_trace


def saving(trace, thr: float) -> tuple[float, float]:
    pol = create_policy("confidence", trace.num_nodes, [thr] * (trace.num_nodes - 1) + [np.inf])
    s = pol.score_matrix(trace.logits)
    ok = s >= pol.thresholds
    ok[:, -1] = True
    node = ok.argmax(axis=1)
    acc = trace.correct[np.arange(trace.num_samples), node].mean()
    cost = trace.cost.exit_cost()[node].mean() / trace.cost.last_exit_cost()
    return float(acc), float(1 - cost)


def main() -> None:
    folder = Path(sys.argv[1])
    print(
        "| head | head FLOPs % of segment (exits 1-3) | test acc % per exit | thr | val drop pp | "
        "test drop pp | test saving % |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in sys.argv[2:]:
        val = load_trace(folder / f"{run}.val.trace.safetensors")
        test = load_trace(folder / f"{run}.test.trace.safetensors")
        cp = val.cost
        frac = [100 * cp.exit_flops[i] / cp.segment_flops[i] for i in range(cp.num_nodes - 1)]
        base_val = val.correct[:, -1].mean()
        best = (1.0, 0.0)
        for thr in np.linspace(0.5, 1.0, 201):
            acc, sv = saving(val, thr)
            if base_val - acc <= 0.005 and sv > best[1]:
                best = (thr, sv)
        acc_val, _ = saving(val, best[0])
        acc, sv = saving(test, best[0])
        print(
            f"| {run} | {' / '.join(f'{f:.2f}' for f in frac)} | "
            f"{' / '.join(f'{a * 100:.1f}' for a in test.exit_accuracy())} | {best[0]:.3f} | "
            f"{(base_val - acc_val) * 100:.2f} | {(test.correct[:, -1].mean() - acc) * 100:.2f} | {sv * 100:.1f} |"
        )


if __name__ == "__main__":
    main()
