"""The distributed runtime: grpc.aio node processes forming a chain of early-exit segments.

- :mod:`.spec`: the cluster spec (TOML) and its validation;
- :mod:`.node`: one node (segment + exit + policy, batching, forwarding, deadlines, degradation);
- :mod:`.kserve`: the Open Inference Protocol (KServe v2) on node 1;
- :mod:`.client`: a client of node 1 and health/info helpers;
- :mod:`.cluster`: local subprocess clusters (``distree cluster up/down``);
- :mod:`.tls`: TLS / mutual TLS credentials and a development CA.

See docs/runtime.md.
"""

from .client import ClusterClient, InferResult, node_info, wait_healthy
from .cluster import LocalCluster, stop_from_pid_file
from .spec import BatchingSpec, ClusterSpec, NodeSpec, SpecError, TLSSpec, load_spec, parse_spec
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
