"""Userspace link emulator: one process per link, moving IP packets between two TUN devices.

Run as a script (stdlib only, so it starts in tens of milliseconds)::

    python _forwarder.py NS_A DEV_A NS_B DEV_B [--mtu 1500] [--seed S]

It creates TUN device ``DEV_A`` inside network namespace ``NS_A`` and ``DEV_B`` inside ``NS_B`` (both
vanish when the process exits), then forwards packets in both directions. Each direction
("ab": A to B, "ba": B to A) is an independent link model, in this order:

1. random loss (probability ``loss``), like netem's ``loss random``;
2. a drop-tail FIFO holding at most ``limit`` packets (serialisation queue + delay line, like
   netem's ``limit``);
3. serialisation at ``rate_bps`` bits/s (``None``: unlimited; ``0``: the link is stalled and
   packets wait). A rate change applies exactly to the rest of the packet being sent;
4. propagation delay ``delay_s`` plus uniform jitter in ``[-jitter_s, +jitter_s]`` (order preserved).

Control: one JSON object per line on stdin, one JSON reply per line on stdout::

    {"cmd": "set", "dir": "ab", "rate_bps": 8e6, "delay_s": 0.02, "jitter_s": 0, "loss": 0, "limit": 1000}
    {"cmd": "rate", "dir": "ba", "rate_bps": 2e6}
    {"cmd": "stats"}

The first line written is ``{"ok": true, "ready": true}`` once both devices exist. EOF on stdin
stops the process. The same module also provides :func:`enter_netns`, used by the library.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from collections import deque
from typing import Any

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
NETNS_DIR = "/var/run/netns"

_libc: Any = None


def enter_netns(name: str) -> None:
    """Move the calling thread into the named network namespace (``ip netns add NAME``)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    path = name if name.startswith("/") else os.path.join(NETNS_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name!r} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(name: str) -> int:
    """Create (or attach to) TUN device ``name`` in the calling thread's network namespace."""
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


class Direction:
    """One direction of the link: loss, FIFO, serialiser, delay line."""

    def __init__(self, out_fd: int, rng: random.Random) -> None:
        self.out_fd = out_fd
        self.rng = rng
        self.rate_bps: float | None = None
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.loss = 0.0
        self.limit = 1000
        self.queue: deque[tuple[float, bytes]] = deque()  # (arrival time, packet) waiting for the serialiser
        self.sending: bytes | None = None  # packet being serialised
        self.left_bits = 0.0  # bits of ``sending`` still to go as of ``updated``
        self.updated = 0.0
        self.done = 0.0  # when ``sending`` finishes at the current rate (inf when stalled)
        self.free_at = 0.0  # when the serialiser last became idle
        self.delayed: list[tuple[float, int, bytes]] = []  # heap of (release time, seq, packet)
        self.last_release = 0.0
        self.seq = 0
        self.stats = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0, "drop_loss": 0, "drop_queue": 0}

    def held(self) -> int:
        return len(self.queue) + (self.sending is not None) + len(self.delayed)

    def configure(self, msg: dict[str, Any], now: float) -> None:
        if "rate_bps" in msg:
            self.set_rate(msg["rate_bps"], now)
        if "delay_s" in msg:
            self.delay_s = max(0.0, float(msg["delay_s"]))
        if "jitter_s" in msg:
            self.jitter_s = max(0.0, float(msg["jitter_s"]))
        if "loss" in msg:
            self.loss = min(max(0.0, float(msg["loss"])), 1.0)
        if "limit" in msg:
            self.limit = max(1, int(msg["limit"]))

    @staticmethod
    def _tx_time(bits: float, rate: float | None) -> float:
        if rate is None or bits <= 0:
            return 0.0
        if rate <= 0:
            return float("inf")
        return bits / rate

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the rate; the rest of the packet on the wire is sent at the new rate."""
        new = None if rate is None else max(0.0, float(rate))
        if self.sending is not None and self.done > now:
            old = self.rate_bps
            sent = 0.0 if old is None or old <= 0 else max(0.0, now - self.updated) * old
            self.left_bits = max(0.0, self.left_bits - sent)
            self.updated = now
            self.done = now + self._tx_time(self.left_bits, new)
        self.rate_bps = new

    def arrive(self, pkt: bytes, now: float) -> None:
        self.stats["rx_packets"] += 1
        self.stats["rx_bytes"] += len(pkt)
        if self.loss and self.rng.random() < self.loss:
            self.stats["drop_loss"] += 1
            return
        if self.held() >= self.limit:
            self.stats["drop_queue"] += 1
            return
        self.queue.append((now, pkt))
        self.pump(now)

    def pump(self, now: float) -> None:
        """Advance the serialiser: finished packets enter the delay line; start the next one."""
        while True:
            if self.sending is not None:
                if self.done > now:
                    return
                self._enter_delay_line(self.sending, self.done)
                self.sending = None
                self.free_at = self.done
            if not self.queue:
                return
            arrived, pkt = self.queue.popleft()
            start = max(arrived, self.free_at)  # back-to-back when it was already waiting
            self.sending = pkt
            self.left_bits = len(pkt) * 8.0
            self.updated = start
            self.done = start + self._tx_time(self.left_bits, self.rate_bps)

    def _enter_delay_line(self, pkt: bytes, t: float) -> None:
        d = self.delay_s
        if self.jitter_s:
            d = max(0.0, d + self.rng.uniform(-self.jitter_s, self.jitter_s))
        release = max(t + d, self.last_release)  # jitter never reorders
        self.last_release = release
        self.seq += 1
        heapq.heappush(self.delayed, (release, self.seq, pkt))

    def flush(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, _, pkt = heapq.heappop(self.delayed)
            try:
                os.write(self.out_fd, pkt)
            except OSError:
                # full or gone (e.g. its namespace is being deleted): the packet is lost
                self.stats["drop_queue"] += 1
                continue
            self.stats["tx_packets"] += 1
            self.stats["tx_bytes"] += len(pkt)

    def next_event(self) -> float:
        t = self.done if self.sending is not None else float("inf")
        if self.delayed:
            t = min(t, self.delayed[0][0])
        return t

    def describe(self) -> dict[str, Any]:
        return {
            "rate_bps": self.rate_bps,
            "delay_s": self.delay_s,
            "jitter_s": self.jitter_s,
            "loss": self.loss,
            "limit": self.limit,
            "held": self.held(),
            **self.stats,
        }


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(ns_a: str, dev_a: str, ns_b: str, dev_b: str, mtu: int = 1500, seed: int | None = None) -> None:
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    enter_netns(ns_a)
    fd_a = open_tun(dev_a)
    enter_netns(ns_b)
    fd_b = open_tun(dev_b)
    enter_netns(f"/proc/self/fd/{home}")
    os.close(home)
    rng = random.Random(seed)
    dirs = {"ab": Direction(fd_b, rng), "ba": Direction(fd_a, rng)}
    by_fd = {fd_a: dirs["ab"], fd_b: dirs["ba"]}
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    buf = b""
    bufsize = max(mtu, 1500) + 64
    _reply({"ok": True, "ready": True})
    while True:
        now = time.monotonic()
        nxt = min(d.next_event() for d in dirs.values())
        timeout = None if nxt == float("inf") else max(0.0, nxt - now)
        readable, _, _ = select.select([fd_a, fd_b, stdin], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                try:
                    chunk = os.read(stdin, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        _reply(_handle(line, dirs, now))
                continue
            d = by_fd[fd]
            for _ in range(256):
                try:
                    pkt = os.read(fd, bufsize)
                except (BlockingIOError, InterruptedError):
                    break
                d.arrive(pkt, now)
        for d in dirs.values():
            d.pump(now)
            d.flush(now)


def _handle(line: bytes, dirs: dict[str, Direction], now: float) -> dict[str, Any]:
    try:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "stats":
            return {"ok": True, "stats": {k: d.describe() for k, d in dirs.items()}}
        names = ["ab", "ba"] if msg.get("dir", "both") == "both" else [msg.get("dir")]
        for name in names:
            if name not in dirs:
                raise ValueError(f"unknown direction {name!r}; use 'ab', 'ba' or 'both'")
        for name in names:
            if cmd == "set":
                dirs[name].configure(msg, now)
            elif cmd == "rate":
                dirs[name].set_rate(msg.get("rate_bps"), now)
            else:
                raise ValueError(f"unknown command {cmd!r}; use 'set', 'rate' or 'stats'")
            dirs[name].pump(now)
        return {"ok": True}
    except Exception as e:  # the parent gets the message; the link keeps running
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Userspace link emulator between two TUN devices in two namespaces.")
    p.add_argument("ns_a")
    p.add_argument("dev_a")
    p.add_argument("ns_b")
    p.add_argument("dev_b")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args(argv)
    try:
        serve(a.ns_a, a.dev_a, a.ns_b, a.dev_b, mtu=a.mtu, seed=a.seed)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        sys.stderr.write(f"link emulator failed: {e}\n")
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
