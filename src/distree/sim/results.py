"""Simulation results: per-request records, aggregates, tables (markdown + JSON) and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..policies.thresholds import node_costs
from ..trace import Trace

RECORD_FIELDS = (
    "request", "sample", "arrival_s", "deadline_s", "exit_node", "correct", "latency_s", "answered_s",
    "deadline_met", "flops", "bytes", "degraded", "qos", "lost",
)  # fmt: skip


@dataclass
class SimResult:
    """Everything one run produced. ``records`` holds one entry per request (arrays of equal length)."""

    records: dict[str, np.ndarray]
    node_busy_s: np.ndarray  # (N,) wall seconds computing
    node_wait_s: np.ndarray  # (N,) summed queueing time of the requests served there
    node_served: np.ndarray  # (N,) requests computed
    node_batches: np.ndarray  # (N,) batches run
    node_down_s: np.ndarray  # (N,) seconds down
    link_busy_s: np.ndarray  # (N,) uplink then hops 1..N-1: seconds transmitting
    makespan_s: float
    last_exit_flops: float
    engine: str
    policy: str
    scenario: str
    wall_s: float = 0.0
    events: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return int(self.node_busy_s.shape[0])

    def aggregates(self) -> dict[str, Any]:
        r = self.records
        n_req = int(r["request"].shape[0])
        ans = ~r["lost"]
        lat = r["latency_s"][ans]
        has_deadline = np.isfinite(r["deadline_s"])
        exits = r["exit_node"][ans]
        hist = np.bincount(exits, minlength=self.num_nodes + 1)[1:]
        span = max(self.makespan_s, 1e-12)

        def pct(q: float) -> float:
            return float(np.percentile(lat, q)) if lat.size else float("nan")

        out: dict[str, Any] = {
            "scenario": self.scenario,
            "policy": self.policy,
            "engine": self.engine,
            "requests": n_req,
            "answered": int(ans.sum()),
            "lost": int((~ans).sum()),
            "accuracy": float(r["correct"].sum() / max(n_req, 1)),
            "latency_mean_s": float(lat.mean()) if lat.size else float("nan"),
            "latency_p50_s": pct(50),
            "latency_p95_s": pct(95),
            "latency_p99_s": pct(99),
            "deadline_miss_rate": float((~r["deadline_met"][has_deadline]).mean()) if has_deadline.any() else 0.0,
            "degraded_rate": float(r["degraded"].mean()),
            "qos_exit_rate": float(r["qos"].mean()),
            "mean_flops": float(r["flops"][ans].mean()) if ans.any() else float("nan"),
            "compute_saved": float(1.0 - r["flops"][ans].mean() / self.last_exit_flops) if ans.any() else 0.0,
            "mean_bytes": float(r["bytes"][ans].mean()) if ans.any() else float("nan"),
            "throughput_per_s": float(ans.sum() / span),
            "makespan_s": float(self.makespan_s),
            "exit_histogram": [int(x) for x in hist],
            "node_utilisation": [float(x) for x in self.node_busy_s / span],
            "node_mean_queue": [float(x) for x in self.node_wait_s / span],
            "node_mean_wait_s": [float(w / max(s, 1)) for w, s in zip(self.node_wait_s, self.node_served, strict=True)],
            "node_served": [int(x) for x in self.node_served],
            "node_mean_batch": [float(s / max(b, 1)) for s, b in zip(self.node_served, self.node_batches, strict=True)],
            "node_down_fraction": [float(x) for x in self.node_down_s / span],
            "link_utilisation": [float(x) for x in self.link_busy_s / span],
            "wall_s": float(self.wall_s),
        }
        if self.events is not None:
            out["events"] = int(self.events)
            out["events_per_s"] = float(self.events / max(self.wall_s, 1e-9))
        out.update(self.meta)
        return out

    def save(self, out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
        """Write ``<stem>.records.npz`` (per request) and ``<stem>.json`` (aggregates)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = stem or f"{self.scenario}.{self.policy}"
        rec = out_dir / f"{stem}.records.npz"
        # mypy checks a ** mapping against every keyword of numpy's stub, allow_pickle: bool included
        np.savez_compressed(rec, **self.records)  # type: ignore[arg-type]
        agg = out_dir / f"{stem}.json"
        agg.write_text(json.dumps(self.aggregates(), indent=2, default=_json_default))
        return {"records": rec, "aggregates": agg}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def skips_heads(policy: object) -> bool:
    """Whether the policy's nodes skip their exit heads (``heads = "final"``: last-exit inference makes no
    early-exit decisions, so only the final head runs, and the head of a node that must answer early because
    of the deadline)."""
    return getattr(policy, "heads", "visited") == "final"


def build_records(
    trace: Trace,
    sample: np.ndarray,
    arrival: np.ndarray,
    deadline: np.ndarray,
    exit0: np.ndarray,
    answered: np.ndarray,
    degraded: np.ndarray,
    qos: np.ndarray,
    return_mode: str,
    skip_heads: bool = False,
) -> dict[str, np.ndarray]:
    """Per-request records from the raw engine outputs (``exit0``: 0-based exit node, -1 = lost)."""
    lost = exit0 < 0
    ex = np.where(lost, 0, exit0)
    correct = trace.correct[sample, ex] & ~lost
    latency = np.where(lost, np.nan, answered - arrival)
    cost = trace.cost
    per_exit = node_costs(cost, "final" if skip_heads else "visited")
    flops = np.where(lost, 0.0, per_exit[ex])
    back_links = ex + 1 if return_mode == "chain" else np.ones_like(ex)
    nbytes = cost.input_bytes + cost.bytes_to_exit()[ex] + cost.output_bytes * back_links
    nbytes = np.where(lost, float(cost.input_bytes), nbytes)
    with np.errstate(invalid="ignore"):
        met = ~lost & (latency <= deadline)
    return {
        "request": np.arange(sample.shape[0], dtype=np.int64),
        "sample": sample.astype(np.int64),
        "arrival_s": arrival.astype(np.float64),
        "deadline_s": deadline.astype(np.float64),
        "exit_node": np.where(lost, 0, ex + 1).astype(np.int64),
        "correct": correct.astype(bool),
        "latency_s": latency.astype(np.float64),
        "answered_s": np.where(lost, np.nan, answered).astype(np.float64),
        "deadline_met": met.astype(bool),
        "flops": flops.astype(np.float64),
        "bytes": nbytes.astype(np.float64),
        "degraded": degraded.astype(bool),
        "qos": qos.astype(bool),
        "lost": lost.astype(bool),
    }


# ---------------------------------------------------------------------------- tables
# (key, header, format[, scale of a float])
_COLUMNS: list[tuple[str, str, str] | tuple[str, str, str, float]] = [
    ("policy", "policy", "{}"),
    ("accuracy", "acc %", "{:.2f}", 100),
    ("compute_saved", "saved %", "{:.1f}", 100),
    ("latency_mean_s", "mean ms", "{:.2f}", 1000),
    ("latency_p50_s", "p50 ms", "{:.2f}", 1000),
    ("latency_p95_s", "p95 ms", "{:.2f}", 1000),
    ("latency_p99_s", "p99 ms", "{:.2f}", 1000),
    ("deadline_miss_rate", "miss %", "{:.2f}", 100),
    ("qos_exit_rate", "QoS exit %", "{:.2f}", 100),  # exited early for the deadline (runtime: degraded, "deadline")
    ("degraded_rate", "degraded %", "{:.2f}", 100),  # answered early because a successor was down
    ("throughput_per_s", "req/s", "{:.1f}"),
]


def markdown_table(rows: list[dict[str, Any]], extra: list[str] | None = None) -> str:
    cols = list(_COLUMNS)
    for e in extra or []:
        cols.insert(1, (e, e, "{}"))
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c[0], "")
            if isinstance(v, float) and len(c) > 3:
                v = v * c[3]
            try:
                cells.append(c[2].format(v))
            except (ValueError, TypeError):
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def node_table(agg: dict[str, Any]) -> str:
    lines = ["| node | served | util % | mean queue | mean wait ms | mean batch | exits | down % |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i in range(len(agg["node_served"])):
        lines.append(
            f"| {i + 1} | {agg['node_served'][i]} | {agg['node_utilisation'][i] * 100:.1f} | "
            f"{agg['node_mean_queue'][i]:.3f} | {agg['node_mean_wait_s'][i] * 1000:.2f} | "
            f"{agg['node_mean_batch'][i]:.2f} | {agg['exit_histogram'][i]} | {agg['node_down_fraction'][i] * 100:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- plots
def plot_results(results: list[SimResult], path: str | Path) -> Path:
    """Latency CDF per policy and the exit histograms, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for res in results:
        lat = np.sort(res.records["latency_s"][~res.records["lost"]]) * 1000
        if lat.size:
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=res.policy)
    dl = results[0].records["deadline_s"] if results else np.array([])
    if dl.size and np.isfinite(dl).any():
        ax.axvline(float(np.median(dl[np.isfinite(dl)])) * 1000, color="k", ls="--", lw=0.8, label="deadline")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("latency CDF")
    ax.legend(fontsize=8)
    ax = axes[1]
    width = 0.8 / max(len(results), 1)
    for j, res in enumerate(results):
        agg = res.aggregates()
        hist = np.asarray(agg["exit_histogram"], dtype=float)
        x = np.arange(1, hist.size + 1) + (j - (len(results) - 1) / 2) * width
        ax.bar(x, hist / max(hist.sum(), 1), width=width, label=res.policy)
    ax.set_xlabel("exit node")
    ax.set_ylabel("fraction of answers")
    ax.set_title("exits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sweep(rows: list[dict[str, Any]], variable: str, path: str | Path) -> Path:
    """Accuracy, deadline-miss rate and p95 latency against the swept variable, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for pol in policies:
        rs = sorted((r for r in rows if r["policy"] == pol), key=lambda r: r["value"])
        x = [r["value"] for r in rs]
        axes[0].plot(x, [r["accuracy"] * 100 for r in rs], marker="o", label=pol)
        axes[1].plot(x, [r["deadline_miss_rate"] * 100 for r in rs], marker="o", label=pol)
        axes[2].plot(x, [r["latency_p95_s"] * 1000 for r in rs], marker="o", label=pol)
    for ax, yl in zip(axes, ["accuracy (%)", "deadline misses (%)", "p95 latency (ms)"], strict=True):
        ax.set_xlabel(variable)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
