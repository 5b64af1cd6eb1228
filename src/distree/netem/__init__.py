"""Network emulation for tests and benchmarks: node processes in Linux network namespaces, chained by
shaped links (rate, delay, jitter, loss, bandwidth-trace replay). See ``docs/netem.md``.

Owns namespaces, links, both shaping backends and the capability probe. Imports only the standard
library, ``distree._proc`` and :mod:`distree.fluctuation` (bandwidth traces, on replay); no torch,
numpy or grpc.

>>> from distree.netem import NetnsChain, netem_available     # doctest: +SKIP
>>> ok, why = netem_available()
>>> with NetnsChain(2) as chain:
...     chain.link(0).shape(rate_mbit=8, delay_ms=20)
...     node1 = chain.node(1).run(["distree", "serve", "--host", chain.addr(1), ...])
"""

from __future__ import annotations

from ._cmd import NetemError, NetemUnavailable, in_netns
from .capability import Capabilities, kernel_netem_available, netem_available, probe
from .chain import (
    Link,
    LinkParams,
    Namespace,
    NetnsChain,
    cleanup_stale,
    list_namespaces,
    run_in,
    shape,
    socket_in,
)
from .replay import TraceReplay, replay_trace

__all__ = [
    "Capabilities",
    "Link",
    "LinkParams",
    "Namespace",
    "NetemError",
    "NetemUnavailable",
    "NetnsChain",
    "TraceReplay",
    "cleanup_stale",
    "in_netns",
    "kernel_netem_available",
    "list_namespaces",
    "netem_available",
    "probe",
    "replay_trace",
    "run_in",
    "shape",
    "socket_in",
]
