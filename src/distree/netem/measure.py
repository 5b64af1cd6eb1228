"""Measuring what a shaped link does: round trips, transfer times, throughput over time.

Everything runs in this process, over sockets created inside the namespaces (:func:`socket_in`).
:func:`selftest` shapes a fresh chain with known settings and reports measured against expected
(``distree netem selftest``)."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .capability import kernel_netem_available, netem_available
from .chain import Namespace, NetnsChain


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
        if srv.recv(1) != b"p":
            raise ConnectionError("echo peer closed")
        srv.sendall(b"q")
        if cli.recv(1) != b"q":
            raise ConnectionError("echo peer closed")
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
    if not done.wait(120):
        raise TimeoutError(f"transfer of {nbytes} bytes did not finish within 120 s")
    elapsed = time.perf_counter() - t0
    th.join()
    if got != nbytes:
        raise ConnectionError(f"connection closed after {got} of {nbytes} bytes")
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
    if len(inside) < 2:
        raise ValueError(f"fewer than two samples between {t_from} and {t_to} s")
    (ta, ba), (tb, bb) = inside[0], inside[-1]
    return (bb - ba) * 8 / (tb - ta) / 1e6


@dataclass(frozen=True)
class Check:
    """One self-test measurement: what was set, what that should give, what was measured."""

    backend: str
    setting: str
    metric: str
    expected: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.measured / self.expected if self.expected else float("nan")


def selftest(backend: str = "auto", repeats: int = 1) -> list[Check]:
    """Shape a 1-node chain with known settings and measure (RTT for delays, transfer time for rates).

    - delay 10 / 40 ms each way: median TCP round trip of a 1-byte echo (expected 2 x delay);
    - rate 8 / 32 Mbit/s: time to move 1 MB / 4 MB over one TCP connection (expected bytes x 8 / rate,
      TCP/IP headers, about 4 %, not counted).

    Delays are skipped for the kernel backend when the kernel has no netem.
    """
    ok, why = netem_available(backend)
    if not ok:
        raise RuntimeError(why)
    out: list[Check] = []
    with NetnsChain(1, backend=backend) as chain, tcp_pair(chain.node(1), chain.client, chain.addr(1)) as (cli, srv):
        name = chain.backend
        link = chain.link(0)
        out.append(Check(name, "unshaped", "rtt_ms", float("nan"), median_rtt_ms(cli, srv)))
        if name == "userspace" or kernel_netem_available()[0]:
            for delay in (10.0, 40.0):
                link.shape(delay_ms=delay)
                for _ in range(repeats):
                    out.append(Check(name, f"delay {delay:g} ms", "rtt_ms", 2 * delay, median_rtt_ms(cli, srv)))
        for rate, nbytes in ((8.0, 1_000_000), (32.0, 4_000_000)):
            link.shape(rate_mbit=rate)
            for _ in range(repeats):
                t = transfer_seconds(cli, srv, nbytes)
                out.append(
                    Check(name, f"rate {rate:g} Mbit/s, {nbytes / 1e6:g} MB", "seconds", nbytes * 8 / (rate * 1e6), t)
                )
        link.clear()
    return out
