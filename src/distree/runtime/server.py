"""The process of node K: the gRPC server (ChainNode, health, and the Open Inference Protocol on node 1),
TLS, the Prometheus metrics endpoint, signals, and the drain on shutdown.

``distree serve --spec S --node K`` runs :func:`run_node`; :func:`serve_node` is the same as a
coroutine (for an event loop of the caller's, with ``ready``/``stop`` events).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

import grpc

from .core import NodeCore
from .link import channel_options
from .protos import node_pb2_grpc
from .servicer import ChainNodeServicer
from .spec import ClusterSpec
from .tls import server_credentials

log = logging.getLogger(__name__)


async def serve_node(
    spec: ClusterSpec,
    k: int,
    *,
    grace_s: float = 10.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    replica: int = 1,
) -> None:
    """Run node ``k`` until SIGTERM/SIGINT (or ``stop``); then drain in-flight requests and exit."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    from .kserve import SERVICE, KServeServicer

    node = spec.node(k, replica)
    core = NodeCore(spec, k, replica=replica)
    server = grpc.aio.server(options=channel_options(spec.max_message_bytes))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    node_pb2_grpc.add_ChainNodeServicer_to_server(ChainNodeServicer(core), server)
    services = ["", "distree.node.v1.ChainNode"]
    if k == 1:
        KServeServicer(core).register(server)
        services.append(SERVICE)
    creds = server_credentials(spec, node)
    port = server.add_secure_port(node.listen, creds) if creds else server.add_insecure_port(node.listen)
    if port == 0:
        raise OSError(f"node {k} could not listen on {node.listen} (port in use or address not local)")
    if node.metrics_port:
        core.metrics.serve(node.metrics_port)
    await core.start()
    await server.start()
    # everything allocated so far (model, modules, imports) lives as long as the process: keep it out of
    # the garbage collector's passes, so collections during requests only look at per-request objects
    gc.collect()
    gc.freeze()
    for s in services:
        await health.set(s, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "node %d serving segment %d on %s",
        k,
        k,
        node.listen,
        extra={"event": "serving", "node": k, "replica": replica, "listen": node.listen, "tls": spec.tls is not None},
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("node %d draining", k, extra={"event": "draining", "node": k})
    await health.enter_graceful_shutdown()
    await server.stop(grace_s)
    await core.close()
    log.info("node %d stopped", k, extra={"event": "stopped", "node": k})


def run_node(spec: ClusterSpec, k: int, grace_s: float = 10.0, replica: int = 1) -> None:
    asyncio.run(serve_node(spec, k, grace_s=grace_s, replica=replica))
