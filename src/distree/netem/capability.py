"""What this machine allows: namespaces, veth, the netem / tbf qdiscs, TUN devices.

:func:`probe` tries each feature once, in a throw-away namespace, and caches the answer for the
process. Nothing is assumed: every answer comes from actually doing it, and every "no" carries the
reason (the missing tool, or the kernel's error message).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field

from ._cmd import NetemError, NetemUnavailable, in_netns, run, which
from ._forwarder import open_tun

log = logging.getLogger(__name__)

BACKENDS = ("auto", "kernel", "userspace")


@dataclass(frozen=True)
class Capabilities:
    """The outcome of :func:`probe`. ``reasons`` explains every feature that is missing."""

    ip: str | None = None
    tc: str | None = None
    namespaces: bool = False
    veth: bool = False
    netem: bool = False
    netem_rate: bool = False
    tbf: bool = False
    tun: bool = False
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def kernel_backend(self) -> bool:
        """veth pairs shaped with tc (delay/jitter/loss need netem; rate alone works with tbf)."""
        return self.namespaces and self.veth and (self.netem or self.tbf)

    @property
    def userspace_backend(self) -> bool:
        """TUN devices joined by a userspace link emulator (everything shaped in one Python process per link)."""
        return self.namespaces and self.tun

    def choose_backend(self, requested: str = "auto") -> str:
        """``kernel`` when sch_netem works, else ``userspace`` when TUN works, else ``kernel`` (rate only).

        Raises :class:`NetemUnavailable` with the reason when the requested backend cannot work here.
        """
        if requested not in BACKENDS:
            raise ValueError(f"unknown netem backend {requested!r}; use one of {', '.join(BACKENDS)}")
        if not self.namespaces:
            raise NetemUnavailable(self.reasons.get("namespaces", "network namespaces are not available"))
        if requested == "kernel" or (requested == "auto" and self.netem and self.veth):
            if not self.kernel_backend:
                raise NetemUnavailable(
                    "kernel backend unavailable: "
                    + "; ".join(self.reasons.get(k, "") for k in ("veth", "netem", "tbf"))
                )
            return "kernel"
        if requested == "userspace" or self.userspace_backend:
            if not self.userspace_backend:
                raise NetemUnavailable("userspace backend unavailable: " + self.reasons.get("tun", "no TUN device"))
            return "userspace"
        if self.kernel_backend:
            return "kernel"
        raise NetemUnavailable("no link-shaping backend works here: " + "; ".join(self.reasons.values()))

    def summary(self) -> str:
        def yn(b: bool) -> str:
            return "yes" if b else "no"

        lines = [
            f"ip: {self.ip or 'missing'}, tc: {self.tc or 'missing'}",
            f"network namespaces: {yn(self.namespaces)}",
            f"veth pairs: {yn(self.veth)}",
            f"netem qdisc (delay/jitter/loss): {yn(self.netem)}",
            f"netem rate option: {yn(self.netem_rate)}",
            f"tbf qdisc (rate): {yn(self.tbf)}",
            f"TUN devices (userspace link emulator): {yn(self.tun)}",
        ]
        lines += [f"  {k}: {v}" for k, v in self.reasons.items()]
        return "\n".join(lines)


def _probe() -> Capabilities:
    reasons: dict[str, str] = {}
    if not sys.platform.startswith("linux"):
        return Capabilities(reasons={"namespaces": f"network namespaces need Linux, this is {sys.platform}"})
    ip, tc = which("ip"), which("tc")
    if ip is None or tc is None:
        missing = " and ".join(t for t, p in (("ip", ip), ("tc", tc)) if p is None)
        reasons["namespaces"] = f"`{missing}` not found: install iproute2 (e.g. apt-get install iproute2)"
        return Capabilities(ip=ip, tc=tc, reasons=reasons)
    ns = f"dtprobe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        run(["ip", "netns", "add", ns])
    except (NetemError, OSError) as e:
        who = "root" if os.geteuid() != 0 else "CAP_SYS_ADMIN and CAP_NET_ADMIN"
        reasons["namespaces"] = f"cannot create a network namespace ({e}); this needs {who}"
        return Capabilities(ip=ip, tc=tc, reasons=reasons)
    caps = {"namespaces": True}
    try:
        try:
            run(["ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])
            caps["veth"] = True
        except NetemError as e:
            reasons["veth"] = f"no veth pairs: {e}"
        if caps.get("veth"):
            try:
                run(["tc", "-n", ns, "qdisc", "add", "dev", "pa", "root", "netem", "delay", "1ms"])
                caps["netem"] = True
            except NetemError as e:
                reasons["netem"] = f"no netem qdisc (kernel module sch_netem): {e}"
            if caps.get("netem"):
                try:
                    run(
                        [
                            "tc",
                            "-n",
                            ns,
                            "qdisc",
                            "replace",
                            "dev",
                            "pa",
                            "root",
                            "netem",
                            "delay",
                            "1ms",
                            "rate",
                            "1mbit",
                        ]
                    )
                    caps["netem_rate"] = True
                except NetemError as e:
                    reasons["netem_rate"] = f"netem has no rate option (tbf is used beneath netem instead): {e}"
            try:
                run(
                    [
                        "tc",
                        "-n",
                        ns,
                        "qdisc",
                        "add",
                        "dev",
                        "pb",
                        "root",
                        "tbf",
                        "rate",
                        "1mbit",
                        "burst",
                        "4kb",
                        "limit",
                        "30kb",
                    ]
                )
                caps["tbf"] = True
            except NetemError as e:
                reasons["tbf"] = f"no tbf qdisc (kernel module sch_tbf): {e}"
        try:
            fd = in_netns(ns, lambda: open_tun("tprobe"))
            os.close(fd)
            caps["tun"] = True
        except (OSError, ValueError) as e:
            reasons["tun"] = f"cannot create a TUN device (/dev/net/tun, CONFIG_TUN): {e}"
    finally:
        try:
            run(["ip", "netns", "del", ns])
        except NetemError as e:
            log.warning("could not delete probe namespace %s: %s", ns, e)
    return Capabilities(ip=ip, tc=tc, reasons=reasons, **caps)


@functools.cache
def probe() -> Capabilities:
    """Probe once per process (creates and deletes one namespace; ~50 ms)."""
    c = _probe()
    log.debug("netem capabilities:\n%s", c.summary())
    return c


def netem_available(backend: str = "auto") -> tuple[bool, str]:
    """Can :class:`~distree.netem.NetnsChain` build shaped links here? ``(ok, reason)``.

    The reason says which backend would be used (and why), or why nothing works. Tests skip with it.
    """
    caps = probe()
    try:
        chosen = caps.choose_backend(backend)
    except NetemUnavailable as e:
        return False, str(e)
    if chosen == "kernel":
        if caps.netem:
            how = "netem rate" if caps.netem_rate else "tbf beneath netem"
            return True, f"kernel backend: veth pairs shaped with tc netem (rate via {how})"
        return True, "kernel backend: veth pairs shaped with tc tbf (rate only: " + caps.reasons["netem"] + ")"
    why = caps.reasons.get("netem", "requested")
    return True, f"userspace backend: TUN devices joined by a userspace link emulator ({why})"


def kernel_netem_available() -> tuple[bool, str]:
    """Is the kernel's netem qdisc usable (needed for delay/jitter/loss with ``backend='kernel'``)?"""
    caps = probe()
    if not caps.namespaces:
        return False, caps.reasons.get("namespaces", "network namespaces are not available")
    if not caps.netem:
        return False, caps.reasons.get("netem", caps.reasons.get("veth", "no netem qdisc"))
    return True, "netem qdisc available" + (" with the rate option" if caps.netem_rate else " (no rate option)")
