"""The process of node K: the gRPC server (ChainNode, health, and the Open Inference Protocol on node 1,
also over HTTP/REST when the spec sets ``http_port``), TLS, the Prometheus metrics endpoint, signals,
and the drain on shutdown.

``distree serve --spec S --node K`` runs :func:`run_node`; :func:`serve_node` is the same as a
coroutine (for an event loop of the caller's, with ``ready``/``stop`` events).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Any

import grpc

from .admission import Admission, InflightBytes
from .auth import AccessControl
from .core import NodeCore
from .limits import NodeLimits
from .memory import MemoryReturner, configure_allocator
from .servicer import ChainNodeServicer
from .spec import ClusterSpec
from .tls import server_credentials
from .transport import channel_options

log = logging.getLogger(__name__)

#: How long a starting node waits for its successor before it reports SERVING anyway.
SUCCESSOR_WAIT_S = 30.0
#: How long a draining node keeps accepting calls after it reports NOT_SERVING: the time its callers'
#: health watches take to move new calls to another replica before the listener closes.
DRAIN_DELAY_S = 1.0


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

    from .dataplane import DataPlane
    from .kserve import SERVICE, KServeServicer

    node = spec.node(k, replica)
    configure_allocator()  # before the model loads: one heap, working buffers kept, large ones unmapped
    core = NodeCore(spec, k, replica=replica)
    labels = [str(c) for c in core.sidecar.get("classes", [])]
    limits = NodeLimits.of(spec, k, core.in_shape, num_classes=core.num_classes, labels=labels)

    def refused(code: str, reason: str) -> None:
        core.metrics.rejected.labels(node=core.metrics.node, code=code).inc()

    access = AccessControl(spec, k, on_refusal=refused)
    inflight = InflightBytes(limits.inflight_bytes, node=core.metrics.node, registry=core.metrics.registry)
    returner = MemoryReturner(inflight)
    server = grpc.aio.server(
        options=channel_options(limits.message_bytes) + limits.server_options(),
        interceptors=[access, Admission(inflight, k, limits.message_bytes, on_refusal=refused)],
        maximum_concurrent_rpcs=limits.concurrent_rpcs,
    )
    health = health_aio.HealthServicer()
    # the health service reports the whole server ("") SERVING from its start; this node is not ready
    # until its successor serves and HTTP listens, so it says NOT_SERVING until then
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    ChainNodeServicer(core).register(server)
    services = ["", "distree.node.v1.ChainNode"]
    plane = rest = None
    if k == 1:
        plane = DataPlane(core)  # one data plane behind both transports
        KServeServicer(core, plane).register(server)
        services.append(SERVICE)
    creds = server_credentials(spec, node)
    port = server.add_secure_port(node.listen, creds) if creds else server.add_insecure_port(node.listen)
    if port == 0:
        raise OSError(f"node {k} could not listen on {node.listen} (port in use or address not local)")
    if node.metrics_port:
        serve_metrics(spec, node, core.metrics)
    await core.start()
    await server.start()
    returner.start()
    # ready only once the successor serves (or after SUCCESSOR_WAIT_S): a chain started in any order is
    # ready from the last node back to node 1, and node 1's first requests are not degraded
    link = core.link
    if link is not None and hasattr(link, "wait_reachable") and not await link.wait_reachable(SUCCESSOR_WAIT_S):
        log.warning(
            "successor %s is not serving after %.0f s; serving anyway, answering locally until it is",
            link.address,
            SUCCESSOR_WAIT_S,
            extra={"event": "successor_missing", "node": k},
        )
    if plane is not None:
        plane.ready = True
        if spec.http_port:
            from .rest import RestServer

            rest = RestServer(plane, spec, grace_s=grace_s)
            await rest.start()
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
        extra={
            "event": "serving",
            "node": k,
            "replica": replica,
            "listen": node.listen,
            "tls": spec.tls is not None,
            "http_port": spec.http_port if k == 1 else 0,
            "max_message_bytes": limits.message_bytes,
            "max_inflight_bytes": limits.inflight_bytes,
        },
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
    if plane is not None:
        plane.ready = False  # new requests get UNAVAILABLE / 503; those in flight finish
    await health.enter_graceful_shutdown()
    if len(spec.replicas(k)) > 1:  # callers have another replica to move to: give their health watches time
        await asyncio.sleep(min(DRAIN_DELAY_S, grace_s))
    await asyncio.gather(server.stop(grace_s), rest.stop() if rest is not None else asyncio.sleep(0))
    await returner.close()
    await core.close()
    log.info("node %d stopped", k, extra={"event": "stopped", "node": k})


def serve_metrics(spec: ClusterSpec, node: Any, metrics: Any) -> None:
    """The node's Prometheus endpoint on the host the node listens on (not every interface); with
    [tls], HTTPS with the node's certificate, and with client_auth a scraper certificate of the CA."""
    host = node.listen.rsplit(":", 1)[0].strip("[]")
    tls = spec.tls
    if tls is None or not tls.metrics:
        metrics.serve(node.metrics_port, host)
        return
    metrics.serve(
        node.metrics_port,
        host,
        certfile=str(node.cert),
        keyfile=str(node.key),
        client_cafile=str(tls.ca) if tls.client_auth else None,
    )


def run_node(spec: ClusterSpec, k: int, grace_s: float = 10.0, replica: int = 1) -> None:
    asyncio.run(serve_node(spec, k, grace_s=grace_s, replica=replica))
