"""The distributed runtime: grpc.aio node processes forming a chain of early-exit segments.

The package owns serving a checkpoint on a chain of nodes: the node (batching, compute, exit
decisions, forwarding with deadlines and degradation), its gRPC services, the cluster spec, TLS,
local clusters and a client. It may import :mod:`distree.models`, :mod:`distree.policies`,
:mod:`distree.trace`, :mod:`distree.checkpoint` and :mod:`distree.fluctuation` (besides the
package's version and private helpers); never :mod:`distree.training`.

One node, by job:

- :mod:`.core`: the node core (compute of segment + exit, emulated device speed, the policy's
  decision per row, answers; ``NodeCore.submit`` is the data-plane entry of every servicer);
- :mod:`.backend`: what computes a segment + exit (``Backend.run``; torch by default);
- :mod:`.batcher`: chunks, the queue and dynamic batching;
- :mod:`.link`: the link to the successor (``ChainLink``: forwarding with the hop's deadlines and
  timeout, estimates, reconnection, failure handling) behind the ``Link`` protocol;
- :mod:`.hop`: what the link and its transports share (a hop's rows, its deadline arithmetic, the
  outcome of a forward and its failure reasons, the estimates, the ``Link`` and ``Transport`` protocols);
- :mod:`.streams`: the transport of a node process (``StreamTransport``: one ``ForwardStream`` per
  replica of the successor's tier, round robin, resends, DNS-name tiers), over :mod:`.replica` (one
  replica: channel, health watch, state) and :mod:`.forward_stream` (one stream call: frames, backlog);
- :mod:`.transport`: gRPC channel options, the error of a failed call, the unary ``GrpcTransport``;
- :mod:`.fake`: an in-process successor (``FakeLink``) for tests without sockets;
- :mod:`.clock`: injectable time (``Clock``, ``ManualClock``);
- :mod:`.servicer`: the node-to-node service ``ChainNode`` (``Forward``, ``Info``);
- :mod:`.dataplane`: node 1's Open Inference Protocol data plane (validation, deadlines, inference,
  classification, metadata, model configuration, statistics), shared by both transports;
- :mod:`.oip`: the protocol's requests, responses and errors, independent of the transport;
- :mod:`.kserve`: the protocol over gRPC (KServe v2 and Triton's extensions, streaming);
- :mod:`.rest`, :mod:`.rest_codec`: the protocol over HTTP/REST (aiohttp; binary tensor data);
- :mod:`.stats`: statistics with Triton's field names and Triton-named Prometheus metrics;
- :mod:`.server`: the node process (server, health, metrics, signals, drain);
- :mod:`.estimates`, :mod:`.metrics`, :mod:`.tensors`, :mod:`.logs`: EWMAs, Prometheus metrics,
  tensors on the wire, JSON logs.

Around the nodes: :mod:`.spec` (the cluster spec, TOML; its tables in :mod:`.spec_tables`, the
writer in :mod:`.spec_toml`), :mod:`.client` (a client of node 1 and health/info helpers),
:mod:`.cluster` (local subprocess clusters),
:mod:`.supervisor` (``distree cluster up/down``: restarts, pid file), :mod:`.balancing` (one channel
over every replica of a tier: round robin, health checking, retries),
:mod:`.tls` (TLS / mutual TLS credentials and a development CA).

See docs/runtime.md.
"""

from .client import ClusterClient, InferResult, node_info, wait_healthy
from .cluster import LocalCluster
from .spec import ClusterSpec, SpecError, load_spec, parse_spec
from .spec_tables import BatchingSpec, NodeSpec, TLSSpec
from .supervisor import stop_from_pid_file
from .tls import ClientTLS, create_dev_pki, issue_cert, spec_client_tls

__all__ = [
    "BatchingSpec",
    "ClientTLS",
    "ClusterClient",
    "ClusterSpec",
    "InferResult",
    "LocalCluster",
    "NodeSpec",
    "SpecError",
    "TLSSpec",
    "create_dev_pki",
    "issue_cert",
    "load_spec",
    "node_info",
    "parse_spec",
    "spec_client_tls",
    "stop_from_pid_file",
    "wait_healthy",
]
