"""Training throughput: 4-node multi-exit WRN-16-2 with the full DistrEE objective vs plain WRN-16-2 with CE.

What: images/s of complete SGD steps (forward, loss, backward, update) at the same batch size, in
the same process, on random 32x32 RGB inputs (throughput does not depend on the data).
How: one warm-up step each, then ROUNDS rounds that alternate the two models (STEPS steps each), so
both see the same machine load; the median of the per-round throughput ratios is printed.
Target: multi-exit / plain >= 0.75.

    python benchmarks/train_throughput.py [--batch 64] [--rounds 5] [--steps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from distree.models import create_model
from distree.training import TrainConfig
from distree.training.losses import distree_loss
from distree.training.trainer import make_projections


def make_step(nodes: int, objective: str, batch: int):
    torch.manual_seed(0)
    net = create_model("wrn-16-2", num_nodes=nodes).train()
    cfg = TrainConfig(model="wrn-16-2", num_nodes=nodes, objective=objective)
    proj = make_projections(net, cfg.ft_target)
    params = list(net.parameters()) + list(proj.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        outs = net(x)
        loss, _ = distree_loss(
            [o.logits for o in outs],
            [o.features for o in outs],
            y,
            ce_weights=cfg.exit_weights(),
            kd_weight=cfg.kd_weight or 0.0,
            temperature=cfg.kd_temperature,
            ft_weight=cfg.ft_weight or 0.0,
            projections=proj,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {
        "multi-exit 4 nodes, distree objective": make_step(4, "distree", args.batch),
        "plain WRN-16-2, CE": make_step(1, "ce", args.batch),
    }
    for step in runs.values():
        step()  # warm-up
    ips: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for name, step in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            ips[name].append(args.steps * args.batch / (time.perf_counter() - t0))
    print(
        f"# train throughput, WRN-16-2 on 32x32x3, batch {args.batch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.rounds} alternating rounds x {args.steps} steps"
    )
    med = {k: statistics.median(v) for k, v in ips.items()}
    for k, v in med.items():
        print(f"{k:40s} {v:8.1f} images/s  (rounds: {', '.join(f'{x:.1f}' for x in ips[k])})")
    a, b = (ips[k] for k in runs)
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))  # paired: same round, same load
    print(f"ratio multi-exit/plain = {ratio:.3f}  (target >= 0.75: {'met' if ratio >= 0.75 else 'MISSED'})")


if __name__ == "__main__":
    main()
