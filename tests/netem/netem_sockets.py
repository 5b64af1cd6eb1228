"""Socket measurements across namespaces for the netem tests (in-process: sockets made inside namespaces)."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from distree.netem import Namespace


@contextmanager
def tcp_pair(
    server_ns: Namespace, client_ns: Namespace, server_addr: str
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP pair: (client side in ``client_ns``, server side in ``server_ns`` at ``server_addr``)."""
    lsock = server_ns.socket()
    lsock.bind((server_addr, 0))
    lsock.listen(1)
    lsock.settimeout(10)
    cli = client_ns.socket()
    cli.settimeout(20)
    try:
        cli.connect(lsock.getsockname())
        srv, _ = lsock.accept()
        srv.settimeout(20)
        for s in (cli, srv):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            yield cli, srv
        finally:
            srv.close()
    finally:
        cli.close()
        lsock.close()


def median_rtt_ms(cli: socket.socket, srv: socket.socket, n: int = 9) -> float:
    """Median round trip of one byte there and one byte back."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        cli.sendall(b"p")
        assert srv.recv(1) == b"p"
        srv.sendall(b"q")
        assert cli.recv(1) == b"q"
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def transfer_seconds(cli: socket.socket, srv: socket.socket, nbytes: int) -> float:
    """Seconds from the first byte sent by ``cli`` until ``srv`` has received all ``nbytes``."""
    got = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal got
        while got < nbytes:
            chunk = srv.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        done.set()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    t0 = time.perf_counter()
    cli.sendall(b"\0" * nbytes)
    assert done.wait(60), "transfer did not finish"
    elapsed = time.perf_counter() - t0
    th.join()
    assert got == nbytes
    return elapsed


def stream_arrivals(cli: socket.socket, srv: socket.socket, seconds: float) -> list[tuple[float, int]]:
    """Send continuously for ``seconds``; return the receiver's (time since start, cumulative bytes) samples."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def writer() -> None:
        block = b"\0" * 16384
        cli.settimeout(0.2)
        while not stop.is_set():
            try:
                cli.send(block)
            except TimeoutError:
                continue
            except OSError:
                return

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    total = 0
    srv.settimeout(0.5)
    while time.perf_counter() - t0 < seconds:
        try:
            chunk = srv.recv(1 << 16)
        except TimeoutError:
            continue
        total += len(chunk)
        samples.append((time.perf_counter() - t0, total))
    stop.set()
    th.join(2)
    return samples


def rate_mbit(samples: list[tuple[float, int]], t_from: float, t_to: float) -> float:
    """Receiver throughput between two times of a :func:`stream_arrivals` record."""
    inside = [(t, b) for t, b in samples if t_from <= t <= t_to]
    assert len(inside) >= 2, f"no data between {t_from} and {t_to} s"
    (ta, ba), (tb, bb) = inside[0], inside[-1]
    return (bb - ba) * 8 / (tb - ta) / 1e6
