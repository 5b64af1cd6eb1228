"""Regenerate every number and figure of docs/results.md from a trained checkpoint, step by step.

Steps (each writes into ``--out/<step>/`` and is skipped when its ``.done`` marker is there, so an
interrupted run resumes where it stopped; ``--force STEP`` reruns one):

1. ``trace``: every exit's outputs on the validation, test and training splits (the model card's
   per-exit accuracy, re-measured; the training split orders risk control's candidates in ``splits``);
2. ``calibrate``: the default policy and the confidence baseline calibrated on validation at
   ``--drop`` pp (policy files for the later steps);
3. ``evaluate``: every policy calibrated on validation and scored on test (the paper comparison), the
   Pareto sweeps, ``report.md`` + ``pareto.png``;
4. ``splits``: the calibration promise over random re-splits of validation + test
   (``experiments/calibration_splits.py``; with the training trace, also the calibration along its
   thresholds, ``--path-trace``);
5. ``signals``: AUC of every exit signal per node and the policies' held-out savings
   (``experiments/exit_signals.py``);
6. ``qos-sim``: deadline sweep in the simulator on a chain with Markov device speeds and real 3G/HSDPA
   bandwidth traces on every hop (``distree sweep``);
7. ``qos``: the deadline rule on fluctuating devices in the simulator and on a real loopback cluster,
   side by side (``experiments/qos_side_by_side.py``).
8. ``ablation``: the training objectives compared at the policy level: per-exit accuracy and the
   calibrated policies' held-out savings of each checkpoint of the same model trained with another
   objective (``experiments/objective_ablation.py``; the sibling folders of ``--checkpoint``, or
   ``--ablation DIR ...``).

``--quick`` uses 1,000 samples per split, fewer re-splits, requests and deadlines (under 15 minutes
on 2 CPU cores). Every step's output ends in its folder's ``log.txt``; ``summary.md`` lists them.

    python experiments/reproduce.py --checkpoint checkpoints/wrn16-1-cifar10-distree --data-dir DATA \\
        --out runs/reproduce [--quick]
    make reproduce DATA=DIR [QUICK=1]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_TRACES = HERE.parent.parent / "shared" / "traces" / "hsdpa-3g"


def run(cmd: list[str], log: Path) -> str:
    """Run one command, echo it, tee its output into ``log``; stop the reproduction if it fails."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        sys.exit(f"step failed (exit {p.returncode}): {shlex.join(cmd)}\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout


def distree(*args: str) -> list[str]:
    return [sys.executable, "-m", "distree", *args]


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / name), *args]


def qos_scenario(path: Path, traces: list[Path], requests: int) -> Path:
    """A 4-node chain: devices at 5 GFLOP/s with a two-state Markov speed, an HSDPA trace on each hop."""
    first, *rest = traces[:3]
    hops = f'[network.hops]\nbandwidth = {{ kind = "trace", path = "{first}", loop = true }}\ndelay_s = 0.02\n'
    hops += "".join(
        f'[[network.hop]]\nhop = {k}\nbandwidth = {{ kind = "trace", path = "{t}", loop = true }}\n'
        for k, t in enumerate(rest, 2)
    )
    path.write_text(
        f"""name = "cifar10-hsdpa-markov"
seed = 0
engine = "vector"
[workload]
arrival = "poisson"
rate_per_s = 2.0
requests = {requests}
samples = "random"
deadline_s = 0.5
[devices]
flops_per_s = 5e8
speed = {{ kind = "markov", factors = [1.0, 0.4], mean_holding_s = [6.0, 3.0] }}
[network.uplink]
bandwidth_mbps = 50.0
delay_s = 0.005
{hops}"""
    )
    return path


def objective_siblings(ckpt: Path) -> list[Path]:
    """Folders beside ``ckpt`` holding the same model, data set and epochs trained with another objective."""
    import json

    def cfg(d: Path) -> dict | None:
        f = d / "train_config.json"
        return json.loads(f.read_text()) if f.is_file() and (d / "model.safetensors").is_file() else None

    mine = cfg(ckpt)
    if mine is None or not ckpt.parent.is_dir():
        return []
    same = ("model", "num_nodes", "dataset", "epochs", "seed", "model_args")
    out = []
    for d in sorted(ckpt.parent.iterdir()):
        c = cfg(d) if d.is_dir() and d.resolve() != ckpt.resolve() else None
        if c and all(c.get(k) == mine.get(k) for k in same) and c.get("objective") != mine.get("objective"):
            out.append(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--drop", type=float, default=0.5, help="accuracy-drop target (pp) of the calibrated policies")
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="folder of bandwidth traces (time_s Mbit/s)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--force", action="append", default=[], help="rerun this step even if done (repeatable)")
    ap.add_argument("--skip", action="append", default=[], help="leave this step out (repeatable)")
    ap.add_argument(
        "--ablation",
        nargs="*",
        type=Path,
        default=None,
        help="checkpoints of the same model trained with other objectives (default: the sibling folders of "
        "--checkpoint whose train_config.json has the same model, data and epochs and another objective)",
    )
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    q = args.quick
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    lim = ["--limit", "1000"] if q else []
    val, test = out / "trace" / "val.trace.safetensors", out / "trace" / "test.trace.safetensors"
    train = out / "trace" / "train.trace.safetensors"  # the line of thresholds the fits choose along
    pol = out / "calibrate"
    drop = str(args.drop)

    def trace(log: Path) -> None:
        for split, f in (("val", val), ("test", test), ("train", train)):
            run(distree("trace", "--checkpoint", str(args.checkpoint), "--split", split, "--out", str(f), *data, *lim),
                log)  # fmt: skip

    def along_train() -> list[str]:  # the *-path-trace modes of the splits step (docs/results.md)
        return ["--path-trace", str(train)] if train.exists() else []

    def calibrate(log: Path) -> None:
        for name in ("distree-conf", "confidence"):
            run(distree("calibrate", "--trace", str(val), "--policy", name, "--max-accuracy-drop", drop,
                        "--out", str(pol / f"{name}.json")), log)  # fmt: skip

    def evaluate(log: Path) -> None:
        run(distree("evaluate", "--trace", str(test), "--val-trace", str(val), "--max-accuracy-drop", drop,
                    "--policies", "all", "--out", str(out / "evaluate")), log)  # fmt: skip

    def splits(log: Path) -> None:
        if not (HERE / "calibration_splits.py").is_file():
            print("  experiments/calibration_splits.py is not there: step left out")
            return
        run(script("calibration_splits.py", "--traces", str(val), str(test), "--out", str(out / "splits"),
                   "--splits", "10" if q else "50", *along_train()),
            log)  # fmt: skip

    def signals(log: Path) -> None:
        run(script("exit_signals.py", "--val", str(val), "--test", str(test), "--out", str(out / "signals"),
                   "--repeats", "3" if q else "10", "--drop-pp", drop), log)  # fmt: skip

    def qos_sim(log: Path) -> None:
        skip = ("LICENSE", "README", "NOTICE")
        traces = sorted(
            p for p in (args.traces.iterdir() if args.traces.is_dir() else [])
            if p.is_file() and not p.name.upper().startswith(skip) and p.suffix not in (".md", ".txt")
        )  # fmt: skip
        if not traces:
            print(f"  no bandwidth traces in {args.traces}: step left out (give --traces DIR)")
            return
        traces = (traces * 3)[:3]  # one per hop, reused if the folder has fewer
        sc = qos_scenario(out / "qos-sim" / "scenario.toml", traces, 2000 if q else 20000)
        run(distree("sweep", "--scenario", str(sc), "--trace", str(test), "--policy",
                    f"{pol / 'distree-conf.json'},{pol / 'confidence.json'},last-exit",
                    "--vary", "deadline_s=0.3,0.5,0.8,1.2", "--out", str(out / "qos-sim")), log)  # fmt: skip

    def qos(log: Path) -> None:
        extra = ["--requests", "60", "--deadlines-ms", "60", "150"] if q else ["--requests", "300"]
        run(script("qos_side_by_side.py", "--checkpoint", str(args.checkpoint), "--test-trace", str(test),
                   "--policy", str(pol / "distree-conf.json"), "--out", str(out / "qos"), *data, *extra),
            log)  # fmt: skip

    def ablation(log: Path) -> None:
        others = args.ablation if args.ablation is not None else objective_siblings(args.checkpoint)
        if not others:
            print("  no checkpoints of the same model with other objectives (--ablation DIR ...): step left out")
            return
        run(script("objective_ablation.py", "--checkpoints", *map(str, [*others, args.checkpoint]),
                   "--out", str(out / "ablation"), "--splits", "3" if q else "20", *data, *lim), log)  # fmt: skip

    steps: list[tuple[str, Callable[[Path], None]]] = [
        ("trace", trace), ("calibrate", calibrate), ("evaluate", evaluate), ("splits", splits),
        ("signals", signals), ("qos-sim", qos_sim), ("qos", qos), ("ablation", ablation),
    ]  # fmt: skip
    unknown = set(args.force + args.skip) - {n for n, _ in steps}
    if unknown:
        sys.exit(f"unknown step(s) {sorted(unknown)}; steps: {', '.join(n for n, _ in steps)}")
    t0 = time.perf_counter()
    for i, (name, fn) in enumerate(steps, 1):
        folder = out / name
        done = folder / ".done"
        if name in args.skip:
            print(f"[{i}/{len(steps)}] {name}: skipped")
            continue
        if done.exists() and name not in args.force:
            print(f"[{i}/{len(steps)}] {name}: done already ({folder})")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "log.txt").write_text("")
        print(f"[{i}/{len(steps)}] {name} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        fn(folder / "log.txt")
        done.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lines = ["# reproduction outputs", "", f"checkpoint `{args.checkpoint}`, quick={q}", ""]
    lines += [f"- `{name}`: {out / name / 'log.txt'}" for name, _ in steps if (out / name / ".done").exists()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"all steps done in {time.perf_counter() - t0:.0f} s; outputs in {out} (summary.md)")


if __name__ == "__main__":
    main()
