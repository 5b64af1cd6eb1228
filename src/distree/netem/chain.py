"""A chain of network namespaces joined by shaped point-to-point links.

Topology (``N`` nodes, ``N + 1`` namespaces)::

    client ──link 0── node1 ──link 1── node2 ── ... ──link N-1── nodeN
    10.200.0.1   10.200.0.2 | 10.200.1.1   10.200.1.2 | ...

Link ``k`` joins namespace ``k`` (device ``next``, address ``10.200.k.1``) and namespace ``k + 1``
(device ``prev``, address ``10.200.k.2``), /24 each. Every namespace forwards IP and has routes to
every other link's subnet, so any namespace reaches any other across the chain, each hop shaped
by its own link (the client reaches node 3 through links 0, 1 and 2). A namespace's
:attr:`Namespace.address` is the address on its client-side link (the client's is ``10.200.0.1``).
Addresses are private to the namespaces, so parallel chains never clash; namespace names carry the
creating process id and a random suffix.

Backends (see :mod:`distree.netem.capability`):

- ``kernel``: a veth pair per link, shaped on each device's egress with ``tc``: netem for
  delay/jitter/loss (and rate when netem has its rate option), tbf for rate (beneath netem when
  netem lacks the rate option; alone when only a rate is set);
- ``userspace``: a TUN device at each end and one small Python process per link that applies the
  same model (loss, FIFO limit, rate, delay + jitter) in userspace; used where the kernel has no
  sch_netem.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._proc import pid_alive
from ._cmd import NetemError, NetemUnavailable, in_netns, run, tool
from .capability import Capabilities, probe

if TYPE_CHECKING:
    from ..fluctuation import BandwidthTrace
    from .replay import TraceReplay

log = logging.getLogger(__name__)

SUBNET_PREFIX = "10.200"
MAX_NODES = 200
DIRECTIONS = ("forward", "backward", "both")
KERNEL_MIN_RATE_MBIT = 0.001  # tc cannot express 0: a zero rate becomes 1 kbit/s with the kernel backend
_FORWARDER = Path(__file__).with_name("_forwarder.py")
_NAME_RE = re.compile(r"^(?P<prefix>[a-z0-9]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)-(?P<role>c|n\d+)$")


# ====================================================================== link parameters
@dataclass(frozen=True)
class LinkParams:
    """Shaping of one direction of a link. ``rate_mbit=None``: unlimited; all zero: unshaped."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    queue_packets: int = 1000

    def __post_init__(self) -> None:
        if self.rate_mbit is not None and not (math.isfinite(self.rate_mbit) and self.rate_mbit >= 0):
            raise ValueError(f"rate_mbit must be a number >= 0 (or None for unlimited), got {self.rate_mbit}")
        for name in ("delay_ms", "jitter_ms"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0 milliseconds, got {v}")
        if self.jitter_ms > self.delay_ms:
            raise ValueError(f"jitter_ms ({self.jitter_ms}) must not exceed delay_ms ({self.delay_ms})")
        if not (0.0 <= self.loss < 1.0):
            raise ValueError(f"loss is a probability in [0, 1) (for 2 % pass 0.02), got {self.loss}")
        if int(self.queue_packets) < 1:
            raise ValueError(f"queue_packets must be >= 1, got {self.queue_packets}")

    @property
    def shaped(self) -> bool:
        return self.rate_mbit is not None or self.delay_ms > 0 or self.loss > 0

    @property
    def needs_netem(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0


# ====================================================================== namespaces
class Namespace:
    """One network namespace of a chain: the client (index 0) or node ``index``."""

    def __init__(self, chain: NetnsChain, index: int, name: str) -> None:
        self.chain = chain
        self.index = index
        self.name = name

    @property
    def role(self) -> str:
        return "client" if self.index == 0 else f"node{self.index}"

    @property
    def address(self) -> str:
        """The address on this namespace's client-side link (the client: its address on link 0)."""
        if self.index == 0:
            return f"{SUBNET_PREFIX}.0.1"
        return f"{SUBNET_PREFIX}.{self.index - 1}.2"

    def run(self, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this namespace (see :func:`run_in`); it is stopped when the chain closes."""
        return run_in(self, argv, **popen_kw)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in this namespace (usable from any thread of this process)."""
        return socket_in(self, family, type)

    def wait_tcp(self, host: str, port: int, timeout_s: float = 60.0) -> float:
        """Wait until a TCP connection from this namespace to ``host:port`` succeeds; returns the seconds waited.

        For servers started with :meth:`run` (e.g. ``chain.client.wait_tcp(chain.addr(1), 7001)``). A
        ``distree serve`` node listens before it is ready (it reports SERVING once its successor serves):
        a client in the namespace waits for that with ``distree.runtime.client.wait_healthy``.
        """
        t0 = time.monotonic()
        last: OSError | None = None
        while time.monotonic() - t0 < timeout_s:
            s = self.socket()
            s.settimeout(1.0)
            try:
                s.connect((host, int(port)))
                return time.monotonic() - t0
            except OSError as e:
                last = e
                time.sleep(0.1)
            finally:
                s.close()
        raise TimeoutError(
            f"nothing accepted TCP connections at {host}:{port} from {self.role} within {timeout_s:g} s: {last}"
        )

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, {self.role}, {self.address})"


def _ns_name(ns: Namespace | str) -> str:
    return ns.name if isinstance(ns, Namespace) else str(ns)


def run_in(ns: Namespace | str, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[Any]:
    """Start a process inside network namespace ``ns`` (``ip netns exec``); returns its ``Popen``.

    ``popen_kw`` goes to :class:`subprocess.Popen` (``stdout``, ``env``, ``cwd``, ...). The process
    gets its own session (``start_new_session=True``) unless told otherwise, so a terminal's Ctrl-C
    does not reach it before the chain stops it. Processes started on a :class:`Namespace` are
    terminated (SIGTERM, then SIGKILL) when its chain closes; so is anything else still running in
    the chain's namespaces.
    """
    if not argv:
        raise ValueError("run_in needs a command (argv must not be empty)")
    popen_kw.setdefault("start_new_session", True)
    p = subprocess.Popen([tool("ip"), "netns", "exec", _ns_name(ns), *map(str, argv)], **popen_kw)
    if isinstance(ns, Namespace):
        ns.chain._track(p)
    return p


def socket_in(ns: Namespace | str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
    """Create a socket inside network namespace ``ns`` without moving the calling thread."""
    return in_netns(_ns_name(ns), lambda: socket.socket(family, type))


# ====================================================================== links
class Link(ABC):
    """Link ``index`` between namespace ``a`` (client side) and ``b``; ``forward`` is a to b."""

    dev_a = "next"
    dev_b = "prev"

    def __init__(self, chain: NetnsChain, index: int, a: Namespace, b: Namespace) -> None:
        self.chain = chain
        self.index = index
        self.a = a
        self.b = b
        self.params: dict[str, LinkParams] = {"forward": LinkParams(), "backward": LinkParams()}
        self._lock = threading.RLock()

    @property
    def addr_a(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.1"

    @property
    def addr_b(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.2"

    @property
    def backend(self) -> str:
        return self.chain.backend

    def __repr__(self) -> str:
        return f"Link({self.index}: {self.a.role} <-> {self.b.role}, {self.backend})"

    @staticmethod
    def _directions(direction: str) -> list[str]:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        return ["forward", "backward"] if direction == "both" else [direction]

    # ------------------------------------------------------------------ public
    def shape(
        self,
        rate_mbit: float | None = None,
        delay_ms: float = 0.0,
        jitter_ms: float = 0.0,
        loss: float = 0.0,
        direction: str = "both",
        queue_packets: int = 1000,
    ) -> None:
        """Set this link's shaping (replaces what was there) in ``direction`` (forward = away from the client).

        ``delay_ms`` is one-way (a round trip over a link shaped in both directions sees twice it);
        ``jitter_ms`` is uniform in ``[-jitter, +jitter]``; ``loss`` a probability per packet;
        ``queue_packets`` the most packets held (like netem's ``limit``); ``rate_mbit=None`` unlimited.
        """
        p = LinkParams(rate_mbit, float(delay_ms), float(jitter_ms), float(loss), int(queue_packets))
        with self._lock:
            for d in self._directions(direction):
                self._apply(d, p, rate_only=False)
                self.params[d] = p

    def set_rate(self, rate_mbit: float | None, direction: str = "both") -> None:
        """Change only the rate (Mbit/s, ``None`` unlimited), keeping delay/jitter/loss (trace replay uses this)."""
        with self._lock:
            for d in self._directions(direction):
                p = replace(self.params[d], rate_mbit=None if rate_mbit is None else float(rate_mbit))
                self._apply(d, p, rate_only=True)
                self.params[d] = p

    def clear(self, direction: str = "both") -> None:
        """Remove all shaping in ``direction``."""
        self.shape(direction=direction)

    def replay_trace(
        self,
        trace: str | Path | BandwidthTrace,
        time_scale: float = 1.0,
        direction: str = "both",
        **kw: Any,
    ) -> TraceReplay:
        """Start following a bandwidth trace in a background thread (see :func:`distree.netem.replay_trace`)."""
        from .replay import replay_trace

        return replay_trace(self, trace, time_scale=time_scale, direction=direction, **kw)

    @abstractmethod
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per direction: ``sent_bytes``, ``sent_packets``, ``dropped`` and the current ``params``."""

    # ------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _setup(self) -> None:
        """Create the link's devices (and emulator) and give them their addresses."""

    @abstractmethod
    def _apply(self, direction: str, p: LinkParams, rate_only: bool) -> None:
        """Make ``direction`` shaped as ``p`` (``rate_only``: only the rate differs from before)."""

    @abstractmethod
    def _teardown(self) -> None:
        """Release what deleting the namespaces does not (emulator processes)."""

    def _configure_addresses(self) -> None:
        for ns, dev, addr in ((self.a, self.dev_a, self.addr_a), (self.b, self.dev_b, self.addr_b)):
            run(["ip", "-n", ns.name, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns.name, "link", "set", "dev", dev, "mtu", str(self.chain.mtu), "up"])


# -------------------------------------------------------------------- kernel backend
_SENT_RE = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)")


class KernelLink(Link):
    """veth pair; each direction shaped by qdiscs on the sending device's egress."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # per direction, what is installed: [(position tokens, qdisc kind)]
        self._layout: dict[str, list[tuple[tuple[str, ...], str]]] = {"forward": [], "backward": []}

    def _side(self, direction: str) -> tuple[str, str]:
        return (self.a.name, self.dev_a) if direction == "forward" else (self.b.name, self.dev_b)

    def _setup(self) -> None:
        # gso_max_segs 1: the stack hands the qdiscs MTU-sized packets, not 64 KB GSO bursts, so
        # rate shaping is smooth and a packet queued at a high rate never outgrows tbf's burst
        # after the rate drops (which would stall the queue for good)
        gso = ["gso_max_segs", "1"]
        run(
            [
                "ip",
                "-n",
                self.a.name,
                "link",
                "add",
                self.dev_a,
                *gso,
                "type",
                "veth",
                "peer",
                "name",
                self.dev_b,
                "netns",
                self.b.name,
                *gso,
            ]
        )
        self._configure_addresses()

    def _qdiscs(self, p: LinkParams) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """[(position tokens, qdisc tokens)] for ``p``; empty when unshaped."""
        caps = self.chain.caps
        if not p.shaped:
            return []
        if p.needs_netem and not caps.netem:
            raise NetemUnavailable(
                f"delay/jitter/loss need the netem qdisc, which this kernel lacks ({caps.reasons.get('netem', '')}); "
                "use NetnsChain(..., backend='userspace') or 'auto'"
            )
        rate_bps = None if p.rate_mbit is None else max(p.rate_mbit, KERNEL_MIN_RATE_MBIT) * 1e6
        tbf: tuple[str, ...] = ()
        if rate_bps is not None:
            burst = max(2 * (self.chain.mtu + 14), int(rate_bps / 8 * 0.004))  # >= 2 frames, or 4 ms worth
            limit = int(p.queue_packets) * (self.chain.mtu + 14) + burst
            tbf = ("tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "limit", str(limit))
        if not p.needs_netem:
            return [(("root", "handle", "1:"), tbf)]
        netem: tuple[str, ...] = ("netem", "limit", str(int(p.queue_packets)), "delay", f"{round(p.delay_ms * 1000)}us")
        if p.jitter_ms:
            netem += (f"{round(p.jitter_ms * 1000)}us",)
        if p.loss:
            netem += ("loss", "random", f"{p.loss * 100:.6g}%")
        if rate_bps is None:
            return [(("root", "handle", "1:"), netem)]
        if caps.netem_rate:
            return [(("root", "handle", "1:"), (*netem, "rate", f"{int(rate_bps)}bit"))]
        return [(("root", "handle", "1:"), netem), (("parent", "1:1", "handle", "10:"), tbf)]

    def _apply(self, direction: str, p: LinkParams, rate_only: bool) -> None:
        ns, dev = self._side(direction)
        want = self._qdiscs(p)
        shape = [(pos, q[0]) for pos, q in want]
        have = self._layout[direction]
        if shape == have:
            for pos, q in want:
                if rate_only and q[0] == "netem" and len(want) > 1:
                    continue  # the rate lives in the tbf beneath
                run(["tc", "-n", ns, "qdisc", "change", "dev", dev, *pos, *q])
        else:
            if have:
                run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            self._layout[direction] = []
            for pos, q in want:
                run(["tc", "-n", ns, "qdisc", "add", "dev", dev, *pos, *q])
            self._layout[direction] = shape

    def _teardown(self) -> None:
        """Nothing to do: deleting a namespace deletes its end of the veth pair and the qdiscs on it."""

    def qdisc_show(self, direction: str = "forward") -> str:
        """``tc -s qdisc show`` of the device that shapes ``direction``."""
        ns, dev = self._side(self._directions(direction)[0])
        return run(["tc", "-s", "-n", ns, "qdisc", "show", "dev", dev]).stdout

    def stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in ("forward", "backward"):
            text = self.qdisc_show(d)
            m = _SENT_RE.search(text)
            sent_b, sent_p, dropped = (int(x) for x in m.groups()) if m else (0, 0, 0)
            out[d] = {
                "sent_bytes": sent_b,
                "sent_packets": sent_p,
                "dropped": dropped,
                "params": self.params[d],
                "raw": text,
            }
        return out


# -------------------------------------------------------------------- userspace backend
class UserspaceLink(Link):
    """TUN device at each end; a userspace emulator process (``_forwarder.py``) between them."""

    _WIRE = {"forward": "ab", "backward": "ba"}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.proc: subprocess.Popen[bytes] | None = None

    def _setup(self) -> None:
        argv = [sys.executable, "-I", str(_FORWARDER), self.a.name, self.dev_a, self.b.name, self.dev_b]
        argv += ["--mtu", str(self.chain.mtu)]
        if self.chain.seed is not None:
            argv += ["--seed", str(self.chain.seed + self.index)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready = self._read_reply(timeout=15.0)
        if not ready.get("ready"):
            raise NetemError(f"link emulator for link {self.index} did not start: {ready}")
        self._configure_addresses()

    def _read_reply(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read() or b""
            state = "exited" if self.proc.poll() is not None else f"no answer within {timeout:.0f} s"
            raise NetemError(f"link emulator for link {self.index} {state}: {err.decode(errors='replace').strip()}")
        return json.loads(line)

    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.proc is None or self.proc.stdin is None or self.proc.poll() is not None:
                raise NetemError(f"link emulator for link {self.index} is not running (was the chain closed?)")
            try:
                self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise NetemError(f"link emulator for link {self.index} is not running") from None
            reply = self._read_reply()
        if not reply.get("ok"):
            raise NetemError(f"link emulator for link {self.index} refused {msg}: {reply.get('error')}")
        return reply

    def _apply(self, direction: str, p: LinkParams, rate_only: bool) -> None:
        rate_bps = None if p.rate_mbit is None else p.rate_mbit * 1e6
        if rate_only:
            self._request({"cmd": "rate", "dir": self._WIRE[direction], "rate_bps": rate_bps})
            return
        msg = {
            "cmd": "set",
            "dir": self._WIRE[direction],
            "rate_bps": rate_bps,
            "delay_s": p.delay_ms / 1e3,
            "jitter_s": p.jitter_ms / 1e3,
            "loss": p.loss,
            "limit": int(p.queue_packets),
        }
        self._request(msg)

    def stats(self) -> dict[str, dict[str, Any]]:
        raw = self._request({"cmd": "stats"})["stats"]
        out: dict[str, dict[str, Any]] = {}
        for d, w in self._WIRE.items():
            s = raw[w]
            out[d] = {
                "sent_bytes": s["tx_bytes"],
                "sent_packets": s["tx_packets"],
                "dropped": s["drop_loss"] + s["drop_queue"],
                "params": self.params[d],
                "raw": s,
            }
        return out

    def _teardown(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        with contextlib.suppress(OSError):
            if p.stdin is not None:
                p.stdin.close()
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


# ====================================================================== the chain
_LIVE: set[NetnsChain] = set()
_LIVE_LOCK = threading.Lock()
_ATEXIT = False


def _close_all_at_exit() -> None:
    with _LIVE_LOCK:
        chains = list(_LIVE)
    for c in chains:
        try:
            c.close()
        except Exception as e:  # best effort at interpreter exit
            log.warning("cleanup of %s at exit failed: %s", c, e)


class NetnsChain:
    """``nodes`` node namespaces in a chain behind a client namespace, joined by shapeable links.

    Use as a context manager (or call :meth:`start` and :meth:`close`); the namespaces, links,
    link emulators and every process left in the namespaces are removed on exit, on exceptions and
    at interpreter exit.

    >>> with NetnsChain(2) as chain:                        # doctest: +SKIP
    ...     chain.links[0].shape(rate_mbit=8, delay_ms=20)  # client <-> node1
    ...     server = chain.nodes[0].run(["distree", "serve", ...])
    """

    def __init__(
        self,
        nodes: int,
        backend: str = "auto",
        prefix: str = "dt",
        mtu: int = 1500,
        seed: int | None = None,
    ) -> None:
        if not (1 <= int(nodes) <= MAX_NODES):
            raise ValueError(f"nodes must be between 1 and {MAX_NODES}, got {nodes}")
        if not re.fullmatch(r"[a-z0-9]{1,8}", prefix):
            raise ValueError(f"prefix must be 1-8 lowercase letters/digits, got {prefix!r}")
        if not (576 <= int(mtu) <= 65000):
            raise ValueError(f"mtu must be between 576 and 65000 bytes, got {mtu}")
        self.num_nodes = int(nodes)
        self.requested_backend = backend
        self.prefix = prefix
        self.mtu = int(mtu)
        self.seed = seed
        self.caps: Capabilities = probe()
        self.backend = self.caps.choose_backend(backend)
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._replays: list[TraceReplay] = []
        self._created: list[str] = []
        self._started = False
        self._closed = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ accessors
    @property
    def client(self) -> Namespace:
        return self.namespaces[0]

    @property
    def nodes(self) -> list[Namespace]:
        """Node namespaces, ``nodes[0]`` is node 1."""
        return self.namespaces[1:]

    def node(self, k: int) -> Namespace:
        """Node ``k`` (1-based, as in the chain); ``node(0)`` is the client."""
        if not 0 <= k <= self.num_nodes:
            raise IndexError(f"node index must be in [0, {self.num_nodes}] (0 = client), got {k}")
        return self.namespaces[k]

    def link(self, k: int) -> Link:
        """Link ``k`` between namespace ``k`` and ``k + 1`` (link 0: client <-> node 1)."""
        if not 0 <= k < self.num_nodes:
            raise IndexError(f"link index must be in [0, {self.num_nodes - 1}], got {k}")
        return self.links[k]

    def addr(self, k: int) -> str:
        """Address of namespace ``k`` (0 = client, k = node k)."""
        return self.node(k).address

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"index": ns.index, "role": ns.role, "namespace": ns.name, "address": ns.address} for ns in self.namespaces
        ]

    def __repr__(self) -> str:
        names = ", ".join(ns.name for ns in self.namespaces) or "not started"
        return f"NetnsChain({self.num_nodes} nodes, {self.backend}: {names})"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> NetnsChain:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NetnsChain:
        global _ATEXIT
        with self._lock:
            if self._closed:
                raise NetemError("this chain was closed; create a new NetnsChain")
            if self._started:
                return self
            self._started = True
            with _LIVE_LOCK:
                _LIVE.add(self)
                if not _ATEXIT:
                    atexit.register(_close_all_at_exit)
                    _ATEXIT = True
            try:
                self._build()
            except BaseException:
                self.close()
                raise
        log.info("netem chain up: %s", self)
        return self

    def _build(self) -> None:
        tag = f"{self.prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        for i in range(self.num_nodes + 1):
            name = f"{tag}-{'c' if i == 0 else f'n{i}'}"
            run(["ip", "netns", "add", name])
            self._created.append(name)
            self.namespaces.append(Namespace(self, i, name))
            in_netns(name, _prepare_namespace)
            run(["ip", "-n", name, "link", "set", "dev", "lo", "up"])
        cls = KernelLink if self.backend == "kernel" else UserspaceLink
        for k in range(self.num_nodes):
            link = cls(self, k, self.namespaces[k], self.namespaces[k + 1])
            self.links.append(link)
            link._setup()
        for ns in self.namespaces:
            i = ns.index
            for k in range(self.num_nodes):
                if k in (i - 1, i):
                    continue
                if k > i:
                    via, dev = f"{SUBNET_PREFIX}.{i}.2", Link.dev_a
                else:
                    via, dev = f"{SUBNET_PREFIX}.{i - 1}.1", Link.dev_b
                run(["ip", "-n", ns.name, "route", "add", f"{SUBNET_PREFIX}.{k}.0/24", "via", via, "dev", dev])

    def shape_all(self, **kw: Any) -> None:
        """:meth:`Link.shape` on every link with the same arguments."""
        for link in self.links:
            link.shape(**kw)

    def _track(self, p: subprocess.Popen[Any]) -> None:
        with self._lock:
            if self._closed:
                p.kill()
                p.wait()
                raise NetemError("the chain is closed; cannot start processes in it")
            self._procs.append(p)

    def _track_replay(self, r: TraceReplay) -> None:
        with self._lock:
            self._replays.append(r)

    def close(self, stop_timeout: float = 5.0) -> None:
        """Stop replays, stop every process in the namespaces, stop the link emulators, delete the namespaces."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors: list[str] = []
        for r in self._replays:
            try:
                r.stop(raise_error=False)
            except Exception as e:
                errors.append(f"replay: {e}")
        _stop_processes(self._created, self._procs, stop_timeout)
        for link in self.links:
            try:
                link._teardown()
            except Exception as e:
                errors.append(f"link {link.index}: {e}")
        for name in self._created:
            try:
                run(["ip", "netns", "del", name])
            except NetemError as e:
                errors.append(str(e))
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if errors:
            log.warning("netem cleanup of %s: %s", self, "; ".join(errors))
        else:
            log.info("netem chain removed: %s", ", ".join(self._created))


def _prepare_namespace() -> None:
    """In a new namespace: forward IPv4, no IPv6 (no stray router/neighbour traffic on shaped links)."""
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1\n")
    for path in ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"):
        with contextlib.suppress(OSError), open(path, "w") as f:
            f.write("1\n")


def _pids_in(ns: str) -> list[int]:
    p = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit() and int(x) != os.getpid()]


def _stop_processes(namespaces: Sequence[str], procs: Sequence[subprocess.Popen[Any]], timeout: float) -> None:
    """SIGTERM everything started in / still running in the namespaces; SIGKILL what is left after ``timeout``."""
    pids = {p.pid for p in procs if p.poll() is None}
    for ns in namespaces:
        pids.update(_pids_in(ns))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.poll()
        if not any(pid_alive(pid) for pid in pids):
            break
        time.sleep(0.02)
    for ns in namespaces:
        pids.update(_pids_in(ns))
    for pid in pids:
        if pid_alive(pid):
            log.warning("process %d did not stop within %.1f s of SIGTERM; killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=2)


def list_namespaces(prefix: str | None = None) -> list[str]:
    """Names of existing network namespaces (optionally only those a chain with ``prefix`` created)."""
    out = run(["ip", "netns", "list"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    if prefix is None:
        return names
    return [n for n in names if (m := _NAME_RE.match(n)) and m["prefix"] == prefix]


def cleanup_stale(prefix: str = "dt") -> list[str]:
    """Delete namespaces left by chains whose creating process has died (e.g. killed with SIGKILL).

    Only names of the form ``PREFIX-PID-RAND-ROLE`` whose PID no longer runs are touched; live
    chains of other processes are left alone. Returns the deleted names.
    """
    stale = [n for n in list_namespaces(prefix) if not pid_alive(int(_NAME_RE.match(n)["pid"]))]  # type: ignore[index]
    _stop_processes(stale, [], timeout=3.0)
    removed = []
    for name in stale:
        try:
            run(["ip", "netns", "del", name])
            removed.append(name)
        except NetemError as e:
            log.warning("could not delete stale namespace %s: %s", name, e)
    return removed


def shape(
    link: Link,
    rate_mbit: float | None = None,
    delay_ms: float = 0.0,
    jitter_ms: float = 0.0,
    loss: float = 0.0,
    direction: str = "both",
    queue_packets: int = 1000,
) -> None:
    """Shape ``link`` (see :meth:`Link.shape`)."""
    link.shape(rate_mbit, delay_ms, jitter_ms, loss, direction, queue_packets)
