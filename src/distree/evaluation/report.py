"""Evaluation report: per-policy figures on a test trace, Pareto sweeps, markdown + JSON + PNG."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..calibration.scoring import check_compatible
from ..policies.base import ExitPolicy
from ..trace.format import Trace
from .metrics import Metrics, last_exit_metrics
from .pareto import OperatingPoint, SweepPoint, family_label, max_saving_within, operating_points, pareto_sweep
from .scoring import evaluate_policy

if TYPE_CHECKING:
    from matplotlib.typing import ColorType

log = logging.getLogger(__name__)

SWEEP_DROPS = (0.0, 0.25, 0.5, 1.0, 2.0)


@dataclass
class PolicyResult:
    label: str
    policy: ExitPolicy
    metrics: Metrics
    sweep: list[SweepPoint] = field(default_factory=list)
    operating: list[OperatingPoint] = field(default_factory=list)
    family: str = ""  # policy name and non-default parameters: what the sweep and operating points belong to

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "family": self.family,
            "policy": self.policy.to_dict(),
            "metrics": self.metrics.to_dict(),
            "sweep": [p.to_dict() for p in self.sweep],
            "operating_points": [p.to_dict() for p in self.operating],
            "hindsight": {f"{d:g}": max_saving_within(self.sweep, d) for d in SWEEP_DROPS} if self.sweep else {},
        }


@dataclass
class Report:
    trace_meta: dict[str, Any]
    last_exit: Metrics
    results: list[PolicyResult]
    sweep_fit: str  # which trace the sweeps' thresholds were fitted on
    splits: int = 0  # re-splits behind the operating points' spread

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace": self.trace_meta,
            "last_exit": self.last_exit.to_dict(),
            "sweep_fit": self.sweep_fit,
            "splits": self.splits,
            "results": [r.to_dict() for r in self.results],
        }


def build_report(
    trace: Trace,
    policies: list[tuple[str, ExitPolicy]],
    *,
    fit_trace: Trace | None = None,
    sweep: bool = True,
    splits: int = 3,
    seed: int = 0,
) -> Report:
    """Score each (label, policy) on ``trace``; sweep thresholds fitted on ``fit_trace`` (default: ``trace``).

    With ``sweep``, each policy family (name + parameters) also gets operating points: calibrated
    on ``fit_trace`` by cross-fitting to each drop of :data:`SWEEP_DROPS`, scored on ``trace``, with
    the spread over ``splits`` random re-splits (:func:`~distree.evaluation.pareto.operating_points`).
    """
    if not policies:
        raise ValueError("nothing to evaluate: name policies (--policies) or give policy files (--policy-files)")
    if fit_trace is not None and fit_trace.num_nodes != trace.num_nodes:
        raise ValueError(
            f"the sweep trace has {fit_trace.num_nodes} exits but the evaluation trace has {trace.num_nodes}"
        )
    results = []
    swept: set[str] = set()
    for label, pol in policies:
        check_compatible(pol, trace)
        m = evaluate_policy(pol, trace)
        # one sweep per policy family (name + params): calibrated variants share their family's curve
        family = json.dumps([pol.name, pol.params], sort_keys=True, default=str)
        first = sweep and family not in swept
        pts = pareto_sweep(pol, trace, fit_trace) if first else []
        ops = operating_points(pol, trace, fit_trace, SWEEP_DROPS, splits=splits, seed=seed) if first else []
        swept.add(family)
        results.append(PolicyResult(label, pol, m, pts, ops, family_label(pol)))
    meta = {k: v for k, v in trace.meta.items() if k != "classes"}
    meta["num_samples"] = trace.num_samples
    return Report(
        meta,
        last_exit_metrics(trace.correct, trace.cost),
        results,
        "validation trace" if fit_trace is not None else "evaluation trace (in-sample)",
        splits if sweep else 0,
    )


def _th(p: ExitPolicy) -> str:
    return ", ".join("inf" if not np.isfinite(t) else f"{t:.3g}" for t in p.thresholds[:-1]) or "-"


def _spread(o: OperatingPoint) -> str:
    s, d = np.asarray(o.split_savings), np.asarray(o.split_drops_pp)
    sd_s = float(s.std(ddof=1)) if s.size > 1 else 0.0
    sd_d = float(d.std(ddof=1)) if d.size > 1 else 0.0
    return f"{100 * s.mean():.1f} +-{100 * sd_s:.1f} ({d.mean():+.2f} +-{sd_d:.2f})"


def _sweep_table(rep: Report, cell: Callable[[OperatingPoint], str]) -> list[str]:
    """The sweep's markdown table: one row per policy family, one column per target drop."""
    lines = ["| policy | " + " | ".join(f"{d:g} pp" for d in SWEEP_DROPS) + " |", "|---|" + "---:|" * len(SWEEP_DROPS)]
    lines += [f"| {r.family} | " + " | ".join(cell(o) for o in r.operating) + " |" for r in rep.results if r.operating]
    return lines


def report_markdown(rep: Report) -> str:
    """The report as markdown: one row per policy, then the Pareto sweeps' savings at fixed drops."""
    n = rep.last_exit.num_samples
    lines = [
        f"Trace: {rep.trace_meta.get('dataset', '?')} / {rep.trace_meta.get('split', '?')}, {n} samples, "
        f"model {rep.trace_meta.get('model', '?')}, checkpoint {rep.trace_meta.get('checkpoint', '?')}.",
        f"Last exit: accuracy {100 * rep.last_exit.accuracy:.2f}%, {rep.last_exit.last_exit_flops / 1e6:.2f} MFLOPs "
        "per request (all segments + the final head).",
        "",
        "| policy | accuracy % | drop pp | rel. FLOPs | saving % | KiB sent / req | exits per node % | thresholds |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rep.results:
        m = r.metrics
        name = r.label + ("" if r.policy.deployable else " (not deployable)")
        hist = " / ".join(f"{100 * h:.1f}" for h in m.exit_hist)
        lines.append(
            f"| {name} | {100 * m.accuracy:.2f} | {m.drop_pp:+.2f} | {m.rel_flops:.3f} | {100 * m.saving:.1f} | "
            f"{m.mean_bytes / 1024:.1f} | {hist} | {_th(r.policy)} |"
        )
    lines += [
        "",
        "FLOPs count the segments run plus every exit head evaluated on the way; savings are against last-exit "
        "inference (all segments, final head only).",
    ]
    if any(r.operating for r in rep.results):
        fit = rep.sweep_fit
        lines += [
            "",
            f"Operating points: each policy calibrated on the {fit} by cross-fitting to an expected held-out drop "
            "of at most the column's target (what `distree calibrate --max-accuracy-drop` writes), scored on this "
            "trace: FLOPs saving % (drop pp).",
            "",
            *_sweep_table(rep, lambda o: f"{100 * o.saving:.1f} ({o.drop_pp:+.2f})"),
        ]
        if rep.splits:
            how = (
                "the validation and this trace's samples pooled and re-split at random into parts of their sizes"
                if rep.sweep_fit == "validation trace"
                else "this trace re-split at random into halves"
            )
            lines += [
                "",
                f"Spread over {rep.splits} random re-splits ({how}; calibrate on the first, score on the second): "
                "mean saving % +- sd (mean drop pp +- sd).",
                "",
                *_sweep_table(rep, _spread),
            ]
        lines += [
            "",
            "Reading a saving off a sweep at a given drop *on this trace* picks the point in hindsight and reads "
            "high; report.json keeps those figures (`hindsight`) and every sweep point.",
        ]
    return "\n".join(lines) + "\n"


def plot_pareto(rep: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5.0), dpi=120)
    colors: dict[str, ColorType] = {}
    for r in rep.results:
        if not r.policy.deployable or r.policy.baseline:
            continue  # bounds and the baseline are drawn as single markers below
        color: ColorType | None
        if r.sweep:
            xs = [p.rel_flops for p in r.sweep]
            ys = [100 * p.accuracy for p in r.sweep]
            (line,) = ax.plot(
                xs, ys, "-", lw=1.3, alpha=0.9, label=f"{r.family or r.policy.name} (sweep; o calibrated)"
            )
            color = line.get_color()
            colors[r.family] = color
        else:
            color = colors.get(r.family)
        ax.plot(
            r.metrics.rel_flops,
            100 * r.metrics.accuracy,
            "o" if r.sweep else "D",
            ms=6,
            color=color,
            markeredgecolor="black",
            label=None if r.sweep else r.label,
        )
    for r in rep.results:
        if not r.policy.deployable:
            ax.plot(
                r.metrics.rel_flops,
                100 * r.metrics.accuracy,
                "*",
                ms=14,
                color="gold",
                markeredgecolor="black",
                label=f"{r.label} (not deployable)",
            )
    le = rep.last_exit
    ax.plot(1.0, 100 * le.accuracy, "X", ms=11, color="black", label="last exit")
    ax.axhline(100 * le.accuracy - 0.5, color="grey", lw=0.8, ls=":", label="last exit - 0.5 pp")
    ax.set_xlabel("mean FLOPs relative to last exit")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{rep.trace_meta.get('dataset', '')} {rep.trace_meta.get('split', '')}: accuracy vs compute")
    lo = min([100 * le.accuracy - 6] + [100 * r.metrics.accuracy - 1 for r in rep.results])
    ax.set_ylim(bottom=max(lo, 0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(rep: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``pareto.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(report_markdown(rep))
    js = out / "report.json"
    js.write_text(json.dumps(rep.to_dict(), indent=1, default=float))
    png = plot_pareto(rep, out / "pareto.png")
    return {"markdown": md, "json": js, "plot": png}
