"""Run every node of a spec as local subprocesses (``distree cluster up``) and stop them again.

The pid file ``<spec>.pids`` (JSON ``{"1": pid, ...}``) lets ``distree cluster down`` stop a
cluster started elsewhere. Nodes stop gracefully on SIGTERM (drain in-flight requests); anything
still alive after the grace period is killed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .._proc import pid_alive
from .client import wait_healthy
from .spec import ClusterSpec
from .tls import spec_client_tls

log = logging.getLogger(__name__)


def node_command(spec_path: str | Path, k: int, *, json_logs: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "distree", "serve", "--spec", str(spec_path), "--node", str(k)]
    if not json_logs:
        cmd.append("--plain-logs")
    return cmd


def _pid_is_node(pid: int) -> bool:
    """True if ``pid`` runs ``distree serve`` (guards against pids reused by other programs)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return pid_alive(pid)
    return b"serve" in cmd and any(b"distree" in c for c in cmd)


class LocalCluster:
    """Node processes of one spec on this machine. Use as a context manager: always stopped on exit.

    ``cpus``: optional CPU affinity per node (``{k: {core, ...}}``), e.g. one core per node.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        log_dir: str | Path | None = None,
        json_logs: bool = True,
        env: dict[str, str] | None = None,
        cpus: dict[int, set[int]] | None = None,
    ) -> None:
        self.spec = spec
        self.cpus = cpus or {}
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.json_logs = json_logs
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(spec.threads), **(env or {})}
        self.procs: dict[int, subprocess.Popen] = {}
        self._logs: dict[int, object] = {}

    # ---------------------------------------------------------------- nodes
    def start_node(self, k: int) -> subprocess.Popen:
        self.spec.node(k)
        if k in self.procs and self.procs[k].poll() is None:
            raise RuntimeError(f"node {k} is already running (pid {self.procs[k].pid})")
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"node{k}.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs[k] = out
        p = subprocess.Popen(
            node_command(self.spec.path, k, json_logs=self.json_logs),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.procs[k] = p
        if k in self.cpus:
            os.sched_setaffinity(p.pid, self.cpus[k])
        self._write_pids()
        return p

    def wait_node(self, k: int, timeout_s: float = 60.0) -> None:
        tls = spec_client_tls(self.spec)
        end = time.monotonic() + timeout_s
        p = self.procs.get(k)
        while time.monotonic() < end:
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"node {k} exited with code {p.returncode} while starting{self._log_hint(k)}")
            if wait_healthy(self.spec.node(k).address, tls=tls, timeout_s=min(1.0, end - time.monotonic())):
                return
        raise TimeoutError(
            f"node {k} at {self.spec.node(k).address} was not healthy after {timeout_s:.0f} s{self._log_hint(k)}"
        )

    def _log_hint(self, k: int) -> str:
        if self.log_dir is None:
            return " (start with a log folder to see its output)"
        f = self.log_dir / f"node{k}.log"
        tail = f.read_text(errors="replace")[-2000:] if f.is_file() else ""
        return f"; log {f}:\n{tail}"

    def kill_node(self, k: int) -> None:
        """SIGKILL node ``k`` (failure injection)."""
        p = self.procs.get(k)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop_node(self, k: int, timeout_s: float = 15.0) -> int | None:
        p = self.procs.get(k)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        f = self._logs.pop(k, None)
        if f is not None:
            f.close()  # type: ignore[attr-defined]
        return p.returncode

    # ---------------------------------------------------------------- cluster
    def start(self, *, wait: bool = True, timeout_s: float = 120.0) -> LocalCluster:
        try:
            for k in range(1, self.spec.num_nodes + 1):
                self.start_node(k)
            if wait:
                end = time.monotonic() + timeout_s
                for k in range(1, self.spec.num_nodes + 1):
                    self.wait_node(k, max(1.0, end - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 15.0) -> dict[int, int | None]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {k: self.stop_node(k, timeout_s) for k in sorted(self.procs)}
        self.spec.pid_file.unlink(missing_ok=True)
        return codes

    def endpoints(self) -> list[str]:
        return [n.address for n in self.spec.nodes]

    def _write_pids(self) -> None:
        pids = {str(k): p.pid for k, p in self.procs.items() if p.poll() is None}
        self.spec.pid_file.write_text(json.dumps(pids))

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_from_pid_file(spec: ClusterSpec, timeout_s: float = 15.0) -> dict[int, str]:
    """Stop the nodes listed in ``<spec>.pids`` (SIGTERM, then SIGKILL after ``timeout_s``)."""
    f = spec.pid_file
    if not f.is_file():
        raise FileNotFoundError(f"no pid file {f}: no cluster of this spec was started with `distree cluster up`")
    try:
        pids = {int(k): int(v) for k, v in json.loads(f.read_text()).items()}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"pid file {f} is corrupt ({e}); stop the nodes by hand and delete it") from e
    result: dict[int, str] = {}
    for k, pid in pids.items():
        if pid_alive(pid) and _pid_is_node(pid):
            os.kill(pid, signal.SIGTERM)
            result[k] = "stopping"
        else:
            result[k] = "not running"
    end = time.monotonic() + timeout_s
    for k, pid in pids.items():
        if result[k] != "stopping":
            continue
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            result[k] = "killed"
        else:
            result[k] = "stopped"
    f.unlink(missing_ok=True)
    return result


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago on ``host``."""
    import socket

    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports
