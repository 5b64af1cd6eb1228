"""Prometheus metrics of one node (its own registry, served on the node's metrics port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LAT = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class NodeMetrics:
    def __init__(self, node: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        lbl = {"node": str(node)}
        self.requests = Counter("distree_requests", "Request rows received by this node", ["node"], registry=r).labels(
            **lbl
        )
        self.answers = Counter(
            "distree_answers", "Answers returned to clients (node 1) by exit node", ["node", "exit_node"], registry=r
        )
        self.exits_here = Counter(
            "distree_exits_here", "Rows answered with this node's exit", ["node"], registry=r
        ).labels(**lbl)
        self.degraded = Counter(
            "distree_degraded", "Rows this node answered degraded, by reason", ["node", "reason"], registry=r
        )
        self.deadline_misses = Counter(
            "distree_deadline_misses", "Answers that left this node after their deadline", ["node"], registry=r
        ).labels(**lbl)
        self.rejected = Counter("distree_rejected", "Malformed requests rejected", ["node", "code"], registry=r)
        self.queue_s = Histogram(
            "distree_queue_seconds", "Time rows wait before their batch starts", ["node"], buckets=_LAT, registry=r
        ).labels(**lbl)
        self.compute_s = Histogram(
            "distree_compute_seconds", "Segment + exit + policy time per batch", ["node"], buckets=_LAT, registry=r
        ).labels(**lbl)
        self.hop_s = Histogram(
            "distree_hop_seconds", "Transport time of a forward to the successor", ["node"], buckets=_LAT, registry=r
        ).labels(**lbl)
        self.batch = Histogram(
            "distree_batch_size", "Rows per computed batch", ["node"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        ).labels(**lbl)
        self.successor_up = Gauge(
            "distree_successor_up", "1 while the successor is reachable", ["node"], registry=r
        ).labels(**lbl)
        self.inflight = Gauge(
            "distree_inflight", "Rows inside this node (queued, computing or downstream)", ["node"], registry=r
        ).labels(**lbl)
        self.node = str(node)

    def serve(
        self,
        port: int,
        addr: str = "127.0.0.1",
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        client_cafile: str | None = None,
    ) -> None:
        """Serve ``/metrics`` on ``addr:port``; HTTPS with ``certfile``/``keyfile``, and client
        certificates signed by ``client_cafile`` required when it is given."""
        start_http_server(
            port,
            addr=addr,
            registry=self.registry,
            certfile=certfile,
            keyfile=keyfile,
            client_cafile=client_cafile,
            client_auth_required=client_cafile is not None,
        )
