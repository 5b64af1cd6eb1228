"""What one node-to-node hop could cost: ways to carry a Forward call between two processes, same payloads.

A bare client and a bare echo server in another process (no model, no policy: the server decodes the
request into a writable float32 array as a node must, and answers with a reply the size of a Forward
answer for the same rows), for payloads of the sizes the runtime's hops carry (WRN-16-2 and WRN-16-8
features at batch 1 and 8). Transports:

- ``proto-unary``: what the runtime does today: a grpc.aio unary call with the ``ForwardRequest`` /
  ``ForwardResponse`` protobuf messages (features via ``distree.runtime.tensors.to_proto``/``from_proto``,
  one ``Answer`` message per row, string request ids, per-row deadlines), over loopback TCP;
- ``raw-unary``: the same grpc.aio unary call with identity (de)serialisers: a compact fixed binary header
  (``struct``: request id, deadline, node, shape, u64 row ids) followed by the raw feature bytes; the reply
  is a header + float32 probabilities + exit node + score per row;
- ``raw-bidi``: the raw messages on one long-lived bidirectional stream per link (answers matched by id);
- ``raw-unary-uds``, ``raw-bidi-uds``: the same over a Unix domain socket (two nodes on one host);
- ``raw-unary-sync``: the raw unary call on gRPC's synchronous (thread pool) server and client;
- ``asyncio-tcp``, ``asyncio-uds``: no gRPC at all: length-prefixed frames on asyncio streams (the floor
  for a hand-written transport in Python).

Measured: median round trip at concurrency 1 (one call at a time) and calls/s at concurrency 16 (16 in
flight on one channel/stream/connection), blocks of every transport interleaved in rounds, plus the
serialisation alone (build + encode on the caller, decode on the callee, in one process). Ratios are to
``proto-unary``. The servers are idle between calls, unlike a node that has just computed (its caches
are cold, see docs/runtime.md): absolute times are lower than a node's, the ratios are what to choose by.

    python benchmarks/hop_transport.py [--quick] [--rounds 5] [--calls 200] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from runtime_overhead import machine  # noqa: E402 - sibling benchmark module

from distree.runtime.cluster import free_ports  # noqa: E402
from distree.runtime.protos import node_pb2  # noqa: E402
from distree.runtime.spec import DEFAULT_MAX_MESSAGE  # noqa: E402
from distree.runtime.tensors import from_proto, to_proto  # noqa: E402
from distree.runtime.transport import channel_options  # noqa: E402

OPTS = channel_options(DEFAULT_MAX_MESSAGE)  # the runtime's own channel and server options
SERVICE = "hop.Bench"
CLASSES = 10
VARIANTS = (
    "proto-unary",
    "raw-unary",
    "raw-bidi",
    "raw-unary-uds",
    "raw-bidi-uds",
    "raw-unary-sync",
    "asyncio-tcp",
    "asyncio-uds",
)

# ---------------------------------------------------------------------------- the compact format
REQ = struct.Struct("<QdHHH")  # request id, deadline (unix s, 0 = none), from node, ndim, rows
REP = struct.Struct("<QHHddd")  # request id, rows, classes, compute_s, queue_s, downstream_s
FRAME = struct.Struct("<I")  # length prefix of the asyncio transports
STREAM_LIMIT = 16 << 20  # asyncio stream buffers sized for a whole frame (the 64 KiB default splits big ones)


def encode_raw(rid: int, h: np.ndarray, row_ids: np.ndarray, deadline: float, from_node: int) -> bytes:
    dims = struct.pack(f"<{h.ndim}I", *h.shape)
    return b"".join((REQ.pack(rid, deadline, from_node, h.ndim, len(row_ids)), dims, row_ids.tobytes(), h.data))


def decode_raw(buf: bytes) -> tuple[int, np.ndarray, np.ndarray, float]:
    rid, deadline, _, ndim, rows = REQ.unpack_from(buf)
    off = REQ.size
    shape = struct.unpack_from(f"<{ndim}I", buf, off)
    off += 4 * ndim
    ids = np.frombuffer(buf, np.uint64, rows, off)
    off += 8 * rows
    want = math.prod(shape) * 4
    if len(buf) - off != want:
        raise ValueError(f"features carry {len(buf) - off} bytes but shape {list(shape)} of float32 needs {want}")
    x = np.frombuffer(bytearray(memoryview(buf)[off:]), np.float32).reshape(shape)  # one writable copy
    return rid, x, ids, deadline


def reply_raw(rid: int, rows: int) -> bytes:
    probs = np.full((rows, CLASSES), 0.1, np.float32)
    exits = np.full(rows, 4, np.int8)
    score = np.full(rows, 0.5, np.float32)
    return b"".join((REP.pack(rid, rows, CLASSES, 1e-3, 1e-5, 1e-3), probs.data, exits.data, score.data))


def parse_reply_raw(buf: bytes) -> tuple[int, np.ndarray]:
    rid, rows, k, *_ = REP.unpack_from(buf)
    return rid, np.frombuffer(buf, np.float32, rows * k, REP.size).reshape(rows, k)


def encode_proto(h: np.ndarray, ids: list[str], deadline: float) -> node_pb2.ForwardRequest:
    return node_pb2.ForwardRequest(
        request_ids=ids, features=to_proto(h), deadline_unix_s=[deadline] * len(ids), from_node=2
    )


def reply_proto(ids: list[str]) -> node_pb2.ForwardResponse:
    answers = [node_pb2.Answer(request_id=i, exit_node=4, probs=[0.1] * CLASSES, score=0.5) for i in ids]
    r = node_pb2.ForwardResponse(
        answers=answers, compute_s=1e-3, queue_s=1e-5, downstream_s=1e-3, est_compute_s=1e-3, est_continue_s=1e-3
    )
    r.server_s = 1e-4
    return r


# ---------------------------------------------------------------------------- servers
async def _aio_server(port: int, uds: str) -> None:
    server = grpc.aio.server(options=OPTS)

    async def proto(req: node_pb2.ForwardRequest, ctx: Any) -> node_pb2.ForwardResponse:
        x = from_proto(req.features, dtype="float32", row_shape=tuple(req.features.shape[1:]), max_rows=1024)
        return reply_proto(list(req.request_ids)[: x.shape[0]])

    async def raw(req: bytes, ctx: Any) -> bytes:
        rid, x, _, _ = decode_raw(req)
        return reply_raw(rid, x.shape[0])

    async def raw_stream(_requests: Any, ctx: Any) -> None:
        while True:
            req = await ctx.read()
            if req is grpc.aio.EOF:
                return
            rid, x, _, _ = decode_raw(req)
            await ctx.write(reply_raw(rid, x.shape[0]))

    methods = {
        "Proto": grpc.unary_unary_rpc_method_handler(
            proto,
            request_deserializer=node_pb2.ForwardRequest.FromString,
            response_serializer=node_pb2.ForwardResponse.SerializeToString,
        ),
        "Raw": grpc.unary_unary_rpc_method_handler(raw),
        "RawStream": grpc.stream_stream_rpc_method_handler(raw_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.add_insecure_port(f"unix:{uds}")
    await server.start()
    await server.wait_for_termination()


def _sync_server(port: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=OPTS)

    def raw(req: bytes, ctx: Any) -> bytes:
        rid, x, _, _ = decode_raw(req)
        return reply_raw(rid, x.shape[0])

    methods = {"Raw": grpc.unary_unary_rpc_method_handler(raw)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def _frames_server(port: int, uds: str) -> None:
    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.set_write_buffer_limits(high=STREAM_LIMIT)
        try:
            while True:
                (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
                rid, x, _, _ = decode_raw(await reader.readexactly(n))
                rep = reply_raw(rid, x.shape[0])
                writer.write(FRAME.pack(len(rep)) + rep)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    tcp = await asyncio.start_server(conn, "127.0.0.1", port, limit=STREAM_LIMIT)
    unix = await asyncio.start_unix_server(conn, uds, limit=STREAM_LIMIT)
    async with tcp, unix:
        await asyncio.gather(tcp.serve_forever(), unix.serve_forever())


# ---------------------------------------------------------------------------- clients
Call = Callable[[int], Awaitable[None]]


class Payload:
    """One hop's request: features of ``shape`` for ``shape[0]`` rows, in both formats."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.h = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        self.rows = shape[0]
        self.ids = [f"2.{os.getpid()}.{1000 + i}" for i in range(self.rows)]
        self.row_ids = np.arange(1000, 1000 + self.rows, dtype=np.uint64)
        self.deadline = time.time() + 3600.0

    def raw(self, rid: int) -> bytes:
        return encode_raw(rid, self.h, self.row_ids, self.deadline, 2)

    def proto(self) -> node_pb2.ForwardRequest:
        return encode_proto(self.h, self.ids, self.deadline)


class Clients:
    """Long-lived channels, streams and connections to the three servers; one ``call`` per transport."""

    def __init__(self, aio_addr: str, uds: str, sync_addr: str, frames_port: int, frames_uds: str) -> None:
        self.aio_addr, self.uds, self.sync_addr = aio_addr, uds, sync_addr
        self.frames_port, self.frames_uds = frames_port, frames_uds
        self._rid = 0
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    async def open(self) -> None:
        self.tcp = grpc.aio.insecure_channel(self.aio_addr, options=OPTS)
        self.unix = grpc.aio.insecure_channel(f"unix:{self.uds}", options=OPTS)
        self.sync = grpc.insecure_channel(self.sync_addr, options=OPTS)
        for ch in (self.tcp, self.unix):
            await ch.channel_ready()
            self._closers.append(ch.close)
        grpc.channel_ready_future(self.sync).result(timeout=60)
        self.proto_call = self.tcp.unary_unary(
            f"/{SERVICE}/Proto",
            request_serializer=node_pb2.ForwardRequest.SerializeToString,
            response_deserializer=node_pb2.ForwardResponse.FromString,
        )
        self.raw_tcp = self.tcp.unary_unary(f"/{SERVICE}/Raw")
        self.raw_uds = self.unix.unary_unary(f"/{SERVICE}/Raw")
        self.raw_sync = self.sync.unary_unary(f"/{SERVICE}/Raw")
        self.bidi_tcp = await _Bidi.open(self.tcp.stream_stream(f"/{SERVICE}/RawStream"))
        self.bidi_uds = await _Bidi.open(self.unix.stream_stream(f"/{SERVICE}/RawStream"))
        tcp = await asyncio.open_connection("127.0.0.1", self.frames_port, limit=STREAM_LIMIT)
        self.frames_tcp = await _Frames.open(*tcp)
        self.frames_uds_c = await _Frames.open(
            *(await asyncio.open_unix_connection(self.frames_uds, limit=STREAM_LIMIT))
        )
        for c in (self.bidi_tcp, self.bidi_uds, self.frames_tcp, self.frames_uds_c):
            self._closers.append(c.close)

    async def close(self) -> None:
        for c in reversed(self._closers):
            with contextlib.suppress(Exception):
                await c()
        self.sync.close()

    def call(self, variant: str, p: Payload) -> Call:
        """A coroutine function sending one request of ``p`` over ``variant`` and checking its answer."""

        async def proto(_: int) -> None:
            r = await self.proto_call(p.proto(), timeout=30)
            got = {a.request_id: a for a in r.answers}
            assert len(got) == p.rows

        def unary(mc: Any) -> Call:
            async def f(rid: int) -> None:
                r = await mc(p.raw(rid), timeout=30)
                assert parse_reply_raw(r)[0] == rid

            return f

        def streamed(s: _Bidi | _Frames) -> Call:
            async def f(rid: int) -> None:
                r = await s.call(rid, p.raw(rid))
                assert parse_reply_raw(r)[0] == rid

            return f

        async def sync(rid: int) -> None:  # blocks the loop: only ever run alone (see run_block)
            r = self.raw_sync(p.raw(rid), timeout=30)
            assert parse_reply_raw(r)[0] == rid

        return {
            "proto-unary": proto,
            "raw-unary": unary(self.raw_tcp),
            "raw-unary-uds": unary(self.raw_uds),
            "raw-bidi": streamed(self.bidi_tcp),
            "raw-bidi-uds": streamed(self.bidi_uds),
            "raw-unary-sync": sync,
            "asyncio-tcp": streamed(self.frames_tcp),
            "asyncio-uds": streamed(self.frames_uds_c),
        }[variant]


class _Bidi:
    """One bidirectional stream; concurrent callers share it, answers are matched by request id."""

    @classmethod
    async def open(cls, mc: Any) -> _Bidi:
        self = cls()
        self.stream = mc(timeout=3600)
        self.lock = asyncio.Lock()
        self.waiting: dict[int, asyncio.Future] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            r = await self.stream.read()
            if r is grpc.aio.EOF:
                return
            self.waiting.pop(REP.unpack_from(r)[0]).set_result(r)

    async def call(self, rid: int, msg: bytes) -> bytes:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        async with self.lock:  # one write at a time on a stream
            await self.stream.write(msg)
        return await fut

    async def close(self) -> None:
        await self.stream.done_writing()
        self.reader.cancel()


class _Frames:
    """One asyncio stream connection with length-prefixed frames, answers matched by request id."""

    @classmethod
    async def open(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Frames:
        self = cls()
        self.r, self.w = reader, writer
        writer.transport.set_write_buffer_limits(high=STREAM_LIMIT)
        self.waiting: dict[int, asyncio.Future] = {}
        self.task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            (n,) = FRAME.unpack(await self.r.readexactly(FRAME.size))
            r = await self.r.readexactly(n)
            self.waiting.pop(REP.unpack_from(r)[0]).set_result(r)

    async def call(self, rid: int, msg: bytes) -> bytes:
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.w.write(FRAME.pack(len(msg)))
        self.w.write(msg)
        await self.w.drain()
        return await fut

    async def close(self) -> None:
        self.task.cancel()
        self.w.close()


async def run_block(clients: Clients, variant: str, p: Payload, n: int, concurrency: int) -> list[float] | float:
    """``n`` calls: per-call seconds at concurrency 1, else calls/s with ``concurrency`` in flight."""
    call = clients.call(variant, p)
    if concurrency == 1:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await call(clients.rid())
            out.append(time.perf_counter() - t)
        return out
    if variant == "raw-unary-sync":  # the synchronous client keeps `concurrency` futures in flight
        return await asyncio.to_thread(_sync_many, clients, p, n, concurrency)
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await call(clients.rid())

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t)


def _sync_many(clients: Clients, p: Payload, n: int, concurrency: int) -> float:
    import threading

    sem = threading.BoundedSemaphore(concurrency)
    futs = []
    t = time.perf_counter()
    for _ in range(n):
        sem.acquire()
        f = clients.raw_sync.future(p.raw(clients.rid()), timeout=30)
        f.add_done_callback(lambda _f: sem.release())
        futs.append(f)
    for f in futs:
        f.result()
    return n / (time.perf_counter() - t)


# ---------------------------------------------------------------------------- serialisation alone
def serialisation_us(p: Payload, n: int) -> dict[str, float]:
    """Median microseconds: caller's build + encode, callee's decode (+ copy), callee's reply + caller's parse."""
    ts: dict[str, list[float]] = {
        k: [] for k in ("proto_req", "proto_dec", "proto_rep", "raw_req", "raw_dec", "raw_rep")
    }
    shape = tuple(p.h.shape[1:])
    for _ in range(n):
        t = time.perf_counter()
        b = p.proto().SerializeToString()
        ts["proto_req"].append(time.perf_counter() - t)
        t = time.perf_counter()
        req = node_pb2.ForwardRequest.FromString(b)
        from_proto(req.features, dtype="float32", row_shape=shape, max_rows=1024)
        ids = list(req.request_ids)
        ts["proto_dec"].append(time.perf_counter() - t)
        t = time.perf_counter()
        rb = reply_proto(ids).SerializeToString()
        r = node_pb2.ForwardResponse.FromString(rb)
        _ = {a.request_id: list(a.probs) for a in r.answers}
        ts["proto_rep"].append(time.perf_counter() - t)
        t = time.perf_counter()
        b = p.raw(1)
        ts["raw_req"].append(time.perf_counter() - t)
        t = time.perf_counter()
        decode_raw(b)
        ts["raw_dec"].append(time.perf_counter() - t)
        t = time.perf_counter()
        parse_reply_raw(reply_raw(1, p.rows))[1].tolist()
        ts["raw_rep"].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e6 for k, v in ts.items()}


# ---------------------------------------------------------------------------- orchestration
def cases() -> list[tuple[str, tuple[int, ...]]]:
    """(label, feature shape) of the hops to carry: smallest and largest of WRN-16-2, WRN-16-8's largest."""
    from distree.models import create_model

    out = []
    for name, batch, hops in (("wrn-16-2", 1, (2, 0)), ("wrn-16-8", 1, (0,)), ("wrn-16-2", 8, (0,))):
        shapes = create_model(name, num_nodes=4, num_classes=CLASSES).cost_profile().hop_shapes
        for i in hops:
            s = (batch, *(int(d) for d in shapes[i]))
            out.append((f"{name} hop {i + 1}->{i + 2} b{batch} ({math.prod(s) * 4 // 1024} KiB)", s))
    return out


class Servers:
    def __init__(self, tmp: Path) -> None:
        ports = free_ports(3)
        self.aio_port, self.sync_port, self.frames_port = ports
        self.uds = str(tmp / "g.sock")
        self.frames_uds = str(tmp / "f.sock")
        me = [sys.executable, str(Path(__file__).resolve())]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.procs = [
            subprocess.Popen([*me, "--serve", "aio", str(self.aio_port), self.uds], env=env),
            subprocess.Popen([*me, "--serve", "sync", str(self.sync_port), ""], env=env),
            subprocess.Popen([*me, "--serve", "frames", str(self.frames_port), self.frames_uds], env=env),
        ]

    def wait(self, timeout_s: float = 120.0) -> None:
        import socket

        end = time.monotonic() + timeout_s
        for port, path in ((self.aio_port, self.uds), (self.sync_port, None), (self.frames_port, self.frames_uds)):
            while True:
                if any(p.poll() is not None for p in self.procs):
                    raise RuntimeError("an echo server exited while starting (its error is printed above)")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    if path is None or Path(path).exists():
                        break
                except OSError:
                    pass
                if time.monotonic() > end:
                    raise TimeoutError(f"echo server on port {port} did not start in {timeout_s:.0f} s")
                time.sleep(0.1)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


async def measure(
    srv: Servers, variants: list[str], rounds: int, calls: int, load_calls: int, concurrency: int, log: Any
) -> dict[str, Any]:
    clients = Clients(
        f"127.0.0.1:{srv.aio_port}", srv.uds, f"127.0.0.1:{srv.sync_port}", srv.frames_port, srv.frames_uds
    )
    await clients.open()
    out: dict[str, Any] = {}
    try:
        cs = cases()
        payloads = {label: Payload(shape) for label, shape in cs}
        for label in payloads:
            out[label] = {v: {"lat_s": [], "rate": []} for v in variants}
        for v in variants:  # warm-up of every channel and stream
            for p in payloads.values():
                await run_block(clients, v, p, 20, 1)
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for label, p in payloads.items():
                for v in order:
                    out[label][v]["lat_s"] += await run_block(clients, v, p, calls, 1)  # type: ignore[arg-type]
                    out[label][v]["rate"].append(await run_block(clients, v, p, load_calls, concurrency))
            log(f"round {r + 1}/{rounds} done")
        for label, p in payloads.items():
            out[label]["serialisation_us"] = serialisation_us(p, 50)
    finally:
        await clients.close()
    return out


def report(res: dict[str, Any], variants: list[str], concurrency: int) -> list[dict[str, Any]]:
    from rich.console import Console
    from rich.table import Table

    rows = []
    con = Console(width=200)
    for label, per in res.items():
        base_lat = float(np.median(per["proto-unary"]["lat_s"])) if "proto-unary" in per else None
        base_rate = float(np.median(per["proto-unary"]["rate"])) if "proto-unary" in per else None
        t = Table(title=label)
        for c in ("transport", "median µs", "p90 µs", "/ proto-unary", f"calls/s @{concurrency}", "/ proto-unary"):
            t.add_column(c, justify="left" if c == "transport" else "right")
        for v in variants:
            lat = np.asarray(per[v]["lat_s"])
            med, p90, rate = float(np.median(lat)), float(np.percentile(lat, 90)), float(np.median(per[v]["rate"]))
            rl = med / base_lat if base_lat else float("nan")
            rr = rate / base_rate if base_rate else float("nan")
            rows.append({"case": label, "transport": v, "median_us": med * 1e6, "p90_us": p90 * 1e6,
                         "lat_ratio": rl, "rate": rate, "rate_ratio": rr})  # fmt: skip
            t.add_row(v, f"{med * 1e6:.0f}", f"{p90 * 1e6:.0f}", f"{rl:.2f}", f"{rate:.0f}", f"{rr:.2f}")
        con.print(t)
        s = per["serialisation_us"]
        con.print(
            f"  serialisation alone, µs (caller build+encode / callee decode+copy / reply build+parse): "
            f"protobuf {s['proto_req']:.0f} / {s['proto_dec']:.0f} / {s['proto_rep']:.0f}; "
            f"raw {s['raw_req']:.0f} / {s['raw_dec']:.0f} / {s['raw_rep']:.0f}"
        )
    steps = Table(title="one change at a time: median latency ratio / throughput ratio (< 1 / > 1: the change helps)")
    steps.add_column("change")
    labels = list(res)
    for label in labels:
        steps.add_column(label, justify="right")
    by = {(r["case"], r["transport"]): r for r in rows}
    for a, b, what in STEPS:
        if a in variants and b in variants:
            cells = []
            for label in labels:
                ra, rb = by[(label, a)], by[(label, b)]
                cells.append(f"{ra['median_us'] / rb['median_us']:.2f} / {ra['rate'] / rb['rate']:.2f}")
            steps.add_row(f"{what} ({a} vs {b})", *cells)
    con.print(steps)
    return rows


STEPS = (
    ("raw-unary", "proto-unary", "identity serialisers + fixed header instead of protobuf"),
    ("raw-bidi", "raw-unary", "one bidi stream per link instead of a unary call per request"),
    ("raw-bidi", "proto-unary", "both"),
    ("raw-unary-uds", "raw-unary", "Unix domain socket instead of TCP loopback (unary)"),
    ("raw-bidi-uds", "raw-bidi", "Unix domain socket instead of TCP loopback (bidi)"),
    ("raw-unary-sync", "raw-unary", "gRPC sync server + client on threads instead of grpc.aio"),
    ("asyncio-tcp", "raw-bidi", "hand-written asyncio framing instead of gRPC (stream vs stream)"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="calls per latency block")
    ap.add_argument("--load-calls", type=int, default=800, help="calls per throughput block")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="3 rounds of short blocks (about a minute)")
    ap.add_argument("--out", type=Path, help="write the raw numbers as JSON")
    a = ap.parse_args(argv)
    if a.serve:
        kind, port, path = a.serve
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # an echo server has nothing to clean up
        if kind == "aio":
            asyncio.run(_aio_server(int(port), path))
        elif kind == "sync":
            _sync_server(int(port))
        else:
            asyncio.run(_frames_server(int(port), path))
        return 0

    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    variants = [v for v in a.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown transport(s) {bad}; choose from {', '.join(VARIANTS)}")
    rounds, calls, load = (3, 60, 240) if a.quick else (a.rounds, a.calls, a.load_calls)
    load_start = os.getloadavg()
    print("hop transports: the same payloads between two processes on this machine")
    print(f"machine: {machine()}; python {platform.python_version()}, grpcio {grpc.__version__}")
    print(
        f"runs: {rounds} rounds; per round, transport and payload: {calls} serial calls, then {load} calls at "
        f"concurrency {a.concurrency}; transports interleaved; load average {load_start}"
    )
    with tempfile.TemporaryDirectory(prefix="hop-") as d:
        srv = Servers(Path(d))
        try:
            srv.wait()
            res = asyncio.run(measure(srv, variants, rounds, calls, load, a.concurrency, print))
        finally:
            srv.close()
    rows = report(res, variants, a.concurrency)
    print(f"load average {load_start} -> {os.getloadavg()}")
    if a.out:
        meta = {"machine": machine(), "rounds": rounds, "calls": calls, "load_calls": load,
                "concurrency": a.concurrency, "loadavg": [load_start, os.getloadavg()]}  # fmt: skip
        a.out.write_text(json.dumps({"meta": meta, "rows": rows, "raw": res}, indent=1))
        print(f"raw numbers: {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
