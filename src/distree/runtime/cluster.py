"""Run every node of a spec (every replica of every tier) as local subprocesses and stop them again.

:class:`LocalCluster` owns the node processes; :meth:`LocalCluster.supervise` restarts a node that
exits (:mod:`.supervisor` runs it for ``distree cluster up``). The pid file ``<spec>.pids`` (JSON
``{"1": pid, "3.2": pid, ..., "supervisor": pid}``, node names as :meth:`ClusterSpec.node_name`) is
rewritten whenever a node starts, so it always names the processes that run now; ``distree cluster
down`` (:func:`~distree.runtime.supervisor.stop_from_pid_file`) reads it. Nodes stop gracefully on
SIGTERM (drain in-flight requests); anything still alive after the grace period is killed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .client import wait_healthy
from .spec import ClusterSpec
from .tls import spec_client_tls

log = logging.getLogger(__name__)

#: restart backoff: first wait, longest wait; the wait doubles per exit that follows a short run
RESTART_BACKOFF_S = (0.2, 10.0)
#: a node that ran this long before it exited is restarted after the first wait again
STABLE_S = 30.0


def node_command(spec_path: str | Path, k: int, *, json_logs: bool = True, replica: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "distree", "serve", "--spec", str(spec_path), "--node", str(k)]
    if replica != 1:
        cmd += ["--replica", str(replica)]
    if not json_logs:
        cmd.append("--plain-logs")
    return cmd


@dataclass
class Restart:
    """What :meth:`LocalCluster.supervise` did about a node that exited."""

    node: tuple[int, int]
    name: str
    code: int | None
    restarts: int  # restarts of this node so far (this one included once it is done)
    pid: int | None = None  # the new process, once started
    wait_s: float = 0.0  # backoff before the start


class LocalCluster:
    """Node processes of one spec on this machine. Use as a context manager: always stopped on exit.

    Nodes are keyed ``(k, replica)``; the methods take ``replica=1`` by default, so a spec without
    replicas is driven as before. ``cpus``: optional CPU affinity per tier (``{k: {core, ...}}``).
    """

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        log_dir: str | Path | None = None,
        json_logs: bool = True,
        env: dict[str, str] | None = None,
        cpus: dict[int, set[int]] | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        self.spec = spec
        self.cpus = cpus or {}
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.json_logs = json_logs
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(spec.threads), **(env or {})}
        self.procs: dict[tuple[int, int], subprocess.Popen] = {}
        self.restarts: dict[tuple[int, int], int] = {}
        self.supervisor_pid = supervisor_pid  # written to the pid file: `cluster down` signals it
        self._logs: dict[tuple[int, int], object] = {}
        self._started_at: dict[tuple[int, int], float] = {}
        self._due: dict[tuple[int, int], tuple[float, float]] = {}  # node -> (restart time, its backoff)
        self._backoff: dict[tuple[int, int], float] = {}

    def members(self) -> list[tuple[int, int]]:
        return [(k, r) for k, r, _ in self.spec.members()]

    def name(self, k: int, replica: int = 1) -> str:
        return self.spec.node_name(k, replica)

    # ---------------------------------------------------------------- nodes
    def start_node(self, k: int, replica: int = 1) -> subprocess.Popen:
        self.spec.node(k, replica)
        key = (k, replica)
        if key in self.procs and self.procs[key].poll() is None:
            raise RuntimeError(f"node {self.name(k, replica)} is already running (pid {self.procs[key].pid})")
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"node{self.name(k, replica)}.log", "ab")  # noqa: SIM115 - closed in stop()
            old = self._logs.pop(key, None)
            if old is not None:
                old.close()  # type: ignore[attr-defined]
            self._logs[key] = out
        p = subprocess.Popen(
            node_command(self.spec.path, k, json_logs=self.json_logs, replica=replica),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.procs[key] = p
        self._started_at[key] = time.monotonic()
        if k in self.cpus:
            os.sched_setaffinity(p.pid, self.cpus[k])
        self.write_pids()
        return p

    def wait_node(self, k: int, timeout_s: float = 60.0, replica: int = 1) -> None:
        tls = spec_client_tls(self.spec)
        address = self.spec.node(k, replica).address
        end = time.monotonic() + timeout_s
        p = self.procs.get((k, replica))
        while time.monotonic() < end:
            if p is not None and p.poll() is not None:
                raise RuntimeError(
                    f"node {self.name(k, replica)} exited with code {p.returncode} while starting"
                    f"{self._log_hint(k, replica)}"
                )
            if wait_healthy(address, tls=tls, timeout_s=min(1.0, end - time.monotonic())):
                return
        raise TimeoutError(
            f"node {self.name(k, replica)} at {address} was not healthy after {timeout_s:.0f} s"
            f"{self._log_hint(k, replica)}"
        )

    def _log_hint(self, k: int, replica: int = 1) -> str:
        if self.log_dir is None:
            return " (start with a log folder to see its output)"
        f = self.log_dir / f"node{self.name(k, replica)}.log"
        tail = f.read_text(errors="replace")[-2000:] if f.is_file() else ""
        return f"; log {f}:\n{tail}"

    def kill_node(self, k: int, replica: int = 1) -> None:
        """SIGKILL node ``k`` (failure injection)."""
        p = self.procs.get((k, replica))
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop_node(self, k: int, timeout_s: float = 15.0, replica: int = 1) -> int | None:
        key = (k, replica)
        self._due.pop(key, None)
        p = self.procs.get(key)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        f = self._logs.pop(key, None)
        if f is not None:
            f.close()  # type: ignore[attr-defined]
        return p.returncode

    # ---------------------------------------------------------------- supervision
    def supervise(self, now: float | None = None) -> list[Restart]:
        """Restart nodes that exited, each after a backoff (doubling while a node keeps exiting soon after
        its start, up to 10 s). Call it periodically; returns what it saw (an exit, then its restart)."""
        now = time.monotonic() if now is None else now
        events: list[Restart] = []
        first, longest = RESTART_BACKOFF_S
        for key, p in list(self.procs.items()):
            if key in self._due or p.poll() is None:
                continue
            ran = now - self._started_at.get(key, now)
            prev = self._backoff.get(key)
            wait = first if prev is None or ran >= STABLE_S else min(longest, 2 * prev)
            self._backoff[key] = wait
            self._due[key] = (now + wait, wait)
            events.append(Restart(key, self.name(*key), p.returncode, self.restarts.get(key, 0), wait_s=wait))
            log.warning("node %s exited with code %s; restarting in %.1f s", self.name(*key), p.returncode, wait)
        for key, (at, wait) in list(self._due.items()):
            if now < at:
                continue
            del self._due[key]
            self.restarts[key] = self.restarts.get(key, 0) + 1
            p = self.start_node(*key)
            events.append(Restart(key, self.name(*key), None, self.restarts[key], p.pid, wait))
        return events

    # ---------------------------------------------------------------- cluster
    def start(self, *, wait: bool = True, timeout_s: float = 120.0) -> LocalCluster:
        try:
            for k, r in self.members():
                self.start_node(k, r)
            if wait:
                end = time.monotonic() + timeout_s
                for k, r in self.members():
                    self.wait_node(k, max(1.0, end - time.monotonic()), replica=r)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """Stop every node (SIGTERM to all, then wait; kill after ``timeout_s``); exit codes by node name."""
        self._due.clear()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {self.name(*key): self.stop_node(key[0], timeout_s, replica=key[1]) for key in sorted(self.procs)}
        self.spec.pid_file.unlink(missing_ok=True)
        return codes

    def endpoints(self) -> list[str]:
        return [n.address for n in self.spec.nodes]

    def pids(self) -> dict[str, int]:
        """Node name -> pid of every running node (plus ``supervisor``): the pid file's content."""
        out = {self.name(*key): p.pid for key, p in sorted(self.procs.items()) if p.poll() is None}
        if self.supervisor_pid is not None:
            out["supervisor"] = self.supervisor_pid
        return out

    def write_pids(self) -> None:
        f = self.spec.pid_file
        tmp = f.with_name(f.name + ".tmp")
        tmp.write_text(json.dumps(self.pids()))
        tmp.replace(f)  # readers never see a half-written file

    _write_pids = write_pids

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_HANDED_OUT: set[int] = set()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago on ``host`` and that no earlier call in this
    process returned (ports drawn for one cluster's nodes, its metrics and its HTTP endpoint in separate
    calls never collide, though none is bound until its server starts)."""
    import socket

    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(64 * n):
            if len(ports) == n:
                break
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)  # held open until the end: the kernel cannot hand it out twice here
            port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    if len(ports) < n:
        raise OSError(f"found only {len(ports)} of {n} free TCP ports on {host}")
    _HANDED_OUT.update(ports)
    return ports
