"""Inference statistics of the served model, with Triton's field names and metric names.

One :class:`ModelStats` per model version counts requests as the data plane answers or refuses
them; :meth:`ModelStats.to_dict` is the statistics extension's ``ModelStatistics`` object (the same
JSON over HTTP and, parsed into the proto, over gRPC), and :class:`TritonCollector` exports the
counters under Triton's Prometheus names (``nv_inference_*``) next to the ``distree_*`` metrics, read
at scrape time from the same plain integers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.registry import Collector


@dataclass(slots=True)
class Duration:
    """Triton's ``StatisticDuration``: a count and the total nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, n: int = 1) -> None:
        self.count += n
        self.ns += max(int(seconds * 1e9), 0)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Counts of one model version. ``executions`` reads the node's computed batches (dynamic batching
    joins requests, so there can be fewer executions than requests)."""

    name: str
    version: str
    executions: Callable[[], int] = lambda: 0
    last_inference_ms: int = 0
    inference_count: int = 0  # rows (Triton counts a batch of b as b inferences)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)  # by the request's batch size

    def succeeded(self, rows: int, total: float, queue: float, inp: float, infer: float, out: float) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += rows
        self.success.add(total)
        self.queue.add(queue)
        self.compute_input.add(inp)
        self.compute_infer.add(infer)
        self.compute_output.add(out)
        b = self.batches.get(rows)
        if b is None:
            b = self.batches[rows] = BatchStats()
        b.compute_input.add(inp)
        b.compute_infer.add(infer)
        b.compute_output.add(out)

    def failed(self, total: float) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.fail.add(total)

    def to_dict(self) -> dict:
        zero = Duration().to_dict()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.executions(),
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.to_dict(),
                    "compute_infer": b.compute_infer.to_dict(),
                    "compute_output": b.compute_output.to_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
        }


#: Triton's metric name -> (help, value of a ModelStats)
_TRITON: dict[str, tuple[str, Callable[[ModelStats], float]]] = {
    "nv_inference_request_success": (
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    "nv_inference_request_failure": ("Number of failed inference requests, all batch sizes", lambda s: s.fail.count),
    "nv_inference_count": ("Number of inferences performed (a batch of b counts b)", lambda s: s.inference_count),
    "nv_inference_exec_count": ("Number of model executions performed (batches)", lambda s: s.executions()),
    "nv_inference_request_duration_us": (
        "Cumulative inference request duration in microseconds",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns // 1000,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns // 1000,
    ),
}


class TritonCollector(Collector):
    """Triton's per-model counters (labels ``model``, ``version``), named exactly as Triton names them.

    They are exported untyped: prometheus_client's text format would name a counter's samples
    ``<name>_total``, and dashboards query Triton's names as they are (``rate()`` works the same)."""

    def __init__(self, stats: Callable[[], list[ModelStats]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        models = self.stats()
        for name, (doc, value) in _TRITON.items():
            m = Metric(name, doc, "untyped")
            for s in models:
                m.add_sample(name, {"model": s.name, "version": s.version}, float(value(s)))
            yield m
