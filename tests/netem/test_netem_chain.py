"""Namespaces, links, shaping and trace replay on the real kernel.

Skipped, with the reason, where network namespaces are not permitted (no root / CAP_NET_ADMIN, no
iproute2). Tests of the ``kernel`` backend's delay/loss also skip where the kernel has no sch_netem.
Timing checks are ratios or generous bounds; all of them share one xdist group so that two
measurements never compete for the CPU with each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from distree.netem import (
    NetemUnavailable,
    NetnsChain,
    cleanup_stale,
    kernel_netem_available,
    list_namespaces,
    netem_available,
    probe,
    replay_trace,
    run_in,
)
from distree.netem.measure import median_rtt_ms, rate_mbit, stream_arrivals, tcp_pair, transfer_seconds

pytestmark = [pytest.mark.netns, pytest.mark.xdist_group("netem")]

TRACES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "traces", "hsdpa-3g")
BACKENDS = ["kernel", "userspace"]


def need(backend: str = "auto", delay: bool = False) -> None:
    ok, why = netem_available(backend)
    if not ok:
        pytest.skip(f"network emulation not available here: {why}")
    if delay and backend == "kernel":
        ok, why = kernel_netem_available()
        if not ok:
            pytest.skip(f"kernel backend cannot delay here: {why}")


def test_chain_connects_every_namespace_and_routes_across_hops():
    need()
    with NetnsChain(3) as chain:
        names = [ns.name for ns in chain.namespaces]
        assert len(set(names)) == 4 and all(n in list_namespaces() for n in names)
        assert [chain.addr(k) for k in range(4)] == ["10.200.0.1", "10.200.0.2", "10.200.1.2", "10.200.2.2"]
        # client -> node1 (one hop), node1 -> node2 (next hop), client -> node3 (three hops)
        for src, dst in ((0, 1), (1, 2), (0, 3), (3, 1)):
            with tcp_pair(chain.node(dst), chain.node(src), chain.addr(dst)) as (cli, srv):
                cli.sendall(b"hello")
                assert srv.recv(5) == b"hello"
    assert not set(names) & set(list_namespaces())


def test_cleanup_stops_processes_and_removes_namespaces_even_on_error():
    need()
    with pytest.raises(RuntimeError, match="boom"), NetnsChain(2) as chain:
        names = [ns.name for ns in chain.namespaces]
        # a server process inside node 2, reached from the client through both links
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind((sys.argv[1], 7000)); s.listen(); print('ready', flush=True)\n"
            "while True:\n"
            "    c,_=s.accept(); c.sendall(c.recv(64).upper()); c.close()\n"
        )
        server = chain.node(2).run([sys.executable, "-c", code, chain.addr(2)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        assert chain.client.wait_tcp(chain.addr(2), 7000, timeout_s=10) < 10
        with pytest.raises(TimeoutError, match="7001"):
            chain.client.wait_tcp(chain.addr(2), 7001, timeout_s=0.3)
        c = chain.client.socket()
        c.settimeout(10)
        c.connect((chain.addr(2), 7000))
        c.sendall(b"echo")
        assert c.recv(64) == b"ECHO"
        c.close()
        stray = run_in(chain.node(1).name, ["sleep", "60"])  # started by name: found via `ip netns pids`
        raise RuntimeError("boom")
    assert server.poll() is not None
    assert stray.wait(timeout=5) is not None
    assert not set(names) & set(list_namespaces())


def test_cleanup_stale_removes_namespaces_of_dead_processes():
    need()
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"dtstale-{dead.pid}-abc123-c"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        assert cleanup_stale("dtstale") == [name]
        assert name not in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delay_shows_up_in_round_trip_time(backend):
    need(backend, delay=True)
    with NetnsChain(2, backend=backend) as chain, tcp_pair(chain.node(1), chain.client, chain.addr(1)) as (cli, srv):
        base = median_rtt_ms(cli, srv)
        chain.link(0).shape(delay_ms=40)  # each direction
        shaped = median_rtt_ms(cli, srv)
        assert 70 <= shaped <= 120, f"RTT {shaped:.1f} ms with 40 ms each way (unshaped {base:.2f} ms)"
        assert shaped > 10 * base
        chain.link(0).clear(direction="backward")  # 40 ms one way only
        one_way = median_rtt_ms(cli, srv)
        assert 35 <= one_way <= 70, f"RTT {one_way:.1f} ms with 40 ms one way"


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_limits_a_transfer(backend):
    need(backend)
    with NetnsChain(1, backend=backend) as chain, tcp_pair(chain.node(1), chain.client, chain.addr(1)) as (cli, srv):
        fast = transfer_seconds(cli, srv, 1_000_000)
        chain.link(0).shape(rate_mbit=8.0)
        slow = transfer_seconds(cli, srv, 1_000_000)
        # 1 MB = 8 Mbit -> 1 s at 8 Mbit/s (+ ~4 % TCP/IP headers)
        assert 0.7 <= slow <= 1.3, f"1 MB at 8 Mbit/s took {slow:.2f} s (unshaped {fast:.3f} s)"
        stats = chain.link(0).stats()
        assert stats["forward"]["sent_bytes"] >= 1_000_000
        assert stats["forward"]["params"].rate_mbit == 8.0
        # the other direction is independent: only ACKs flowed back
        assert stats["backward"]["sent_bytes"] < 200_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_drops_that_fraction_of_datagrams(backend):
    need(backend, delay=True)
    with NetnsChain(1, backend=backend) as chain:
        rx = chain.node(1).socket(type=socket.SOCK_DGRAM)
        rx.bind((chain.addr(1), 0))
        rx.settimeout(0.5)
        tx = chain.client.socket(type=socket.SOCK_DGRAM)
        chain.link(0).shape(loss=0.3, direction="forward")
        n, got = 1000, 0

        def receive() -> None:  # concurrently, so that the socket buffer never overflows
            nonlocal got
            try:
                while True:
                    rx.recv(64)
                    got += 1
            except TimeoutError:
                pass

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        for i in range(n):
            tx.sendto(b"%d" % i, rx.getsockname())
            if i % 50 == 49:
                time.sleep(0.002)
        reader.join(10)
        rx.close()
        tx.close()
        assert 0.6 <= got / n <= 0.8, f"{got}/{n} datagrams arrived with 30 % loss"


def test_kernel_delay_without_netem_is_refused_clearly():
    need("kernel")
    if probe().netem:
        pytest.skip("this kernel has sch_netem, so delay works with the kernel backend")
    with NetnsChain(1, backend="kernel") as chain, pytest.raises(NetemUnavailable, match="userspace"):
        chain.link(0).shape(delay_ms=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_replay_steps_the_rate_at_the_trace_times(backend, tmp_path):
    need(backend)
    trace = tmp_path / "step.txt"
    trace.write_text("# time_s Mbit/s\n0.0 2.0\n1.2 16.0\n")
    with NetnsChain(1, backend=backend) as chain, tcp_pair(chain.node(1), chain.client, chain.addr(1)) as (cli, srv):
        chain.link(0).shape(rate_mbit=100, queue_packets=100, direction="forward")
        replay = replay_trace(chain.link(0), trace, time_scale=1.0, direction="forward", loop=False)
        samples = stream_arrivals(cli, srv, 2.4)
        assert replay.wait(5)
        replay.stop()
    low, high = rate_mbit(samples, 0.3, 1.1), rate_mbit(samples, 1.5, 2.35)
    assert 1.2 <= low <= 3.0, f"{low:.2f} Mbit/s while the trace says 2"
    assert 10.0 <= high <= 20.0, f"{high:.2f} Mbit/s while the trace says 16"
    assert 4 <= high / low <= 12
    (w0, t0, r0), (w1, t1, r1) = replay.applied
    assert (t0, r0, t1, r1) == (0.0, 2.0, 1.2, 16.0)
    assert w0 < 0.1 and 1.15 <= w1 <= 1.4, f"rates set at {w0:.3f} s and {w1:.3f} s (trace: 0 and 1.2 s)"


def test_real_trace_replay_follows_the_file(tmp_path):
    need()
    path = os.path.join(TRACES, "norway_bus_1")
    if not os.path.isfile(path):
        pytest.skip(f"HSDPA traces not found at {path}")
    from distree.fluctuation import load_bandwidth_trace

    bw = load_bandwidth_trace(path)
    with NetnsChain(1) as chain:
        # 20x faster than recorded: ~1 s of wall time covers ~20 s of the trace
        with chain.link(0).replay_trace(bw, time_scale=0.05) as replay:
            time.sleep(1.0)
        current = chain.link(0).params["forward"].rate_mbit
        assert len(replay.applied) >= 5
        for wall_s, trace_s, mbit in replay.applied:
            assert mbit == pytest.approx(bw.rate_at(trace_s))
            assert abs(wall_s - trace_s * 0.05) < 0.25
        assert current == pytest.approx(replay.applied[-1][2])
        if chain.backend == "kernel":
            assert "tbf" in chain.link(0).qdisc_show("forward") or "netem" in chain.link(0).qdisc_show("forward")
