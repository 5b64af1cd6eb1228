"""The stream transport's replica set: a tier given as one DNS name becomes one replica per address the
name resolves to, and follows the name when its answers change (Kubernetes headless Services)."""

from __future__ import annotations

import asyncio
import socket

from distree.runtime.cluster import free_ports
from distree.runtime.streams import StreamTransport


async def _health_server(port: int):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server


def test_a_dns_name_becomes_one_replica_per_address_and_follows_the_name():
    port = free_ports(1)[0]
    answers = {"ips": ["127.0.0.1"]}

    async def getaddrinfo(host, p, type=0):  # noqa: A002 - the event loop's signature
        assert host == "tier2.example" and p == port
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, p)) for ip in answers["ips"]]

    async def go():
        server = await _health_server(port)
        t = StreamTransport(f"tier2.example:{port}", None, 1 << 20, backoff_s=(0.01, 0.05))
        t.getaddrinfo = getaddrinfo
        try:
            assert [r.address for r in t.replicas] == [f"tier2.example:{port}"]
            t._start()
            for _ in range(500):
                if [r.address for r in t.replicas] == [f"127.0.0.1:{port}"]:
                    break
                await asyncio.sleep(0.01)
            assert [r.address for r in t.replicas] == [f"127.0.0.1:{port}"]
            assert await t.healthy(2.0)
            answers["ips"] = ["127.0.0.1", "127.0.0.2"]  # a pod more (127.0.0.2 serves nothing here)
            t._wake.set_result(None)
            for _ in range(500):
                if len(t.replicas) == 2:
                    break
                await asyncio.sleep(0.01)
            assert sorted(r.address for r in t.replicas) == [f"127.0.0.1:{port}", f"127.0.0.2:{port}"]
            assert t.usable()
        finally:
            await t.close()
            await server.stop(0)

    asyncio.run(go())


def test_a_stream_reports_the_wait_behind_its_queued_bytes():
    """The link's backlog: bytes handed to a stream and not yet written, at the rate its large writes take.
    The deadline rule adds it to the time to continue (ChainLink.continue_s)."""
    from distree.runtime.forward_stream import ForwardStream

    rate = 1_000_000.0  # the fake link writes 1 MB/s

    class Call:
        async def write(self, data: bytes) -> None:
            await asyncio.sleep(len(data) / rate)

        async def read(self):
            await asyncio.Event().wait()

        async def done_writing(self) -> None:
            pass

        def cancel(self) -> None:
            pass

    class Replica:
        address, metadata = "fake:1", ()
        channel = type("Ch", (), {"stream_stream": staticmethod(lambda method: lambda metadata=(): Call())})()

        def stream_ended(self, stream, e) -> None:
            pass

    async def run() -> tuple[float, float, float]:
        s = ForwardStream(Replica())  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        before = s.backlog_s()
        for rid in range(1, 6):  # 5 frames of 100 kB: 0.5 s of writing
            s.send(rid, b"x" * 100_000, loop.create_future())
        await asyncio.sleep(0.15)  # the first frame is written and timed, the others wait
        mid = s.backlog_s()
        await asyncio.sleep(0.6)
        after = s.backlog_s()
        s.close()
        return before, mid, after

    before, mid, after = asyncio.run(run())
    assert before == 0.0 and after == 0.0
    # 3-4 frames still queued at ~1 MB/s measured: 0.3-0.4 s (timer slack on a loaded machine allowed)
    assert 0.15 < mid < 0.6, mid
