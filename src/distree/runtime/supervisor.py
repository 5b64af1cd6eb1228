"""The supervisor of ``distree cluster up`` and the stop of ``distree cluster down``.

The supervisor is one process that owns every node process of a spec: it starts them, restarts one
that exits (with a backoff, :meth:`LocalCluster.supervise`), counts restarts (Prometheus:
``distree_node_restarts_total{node="3.2"}``, ``distree_node_running{node}``), keeps the pid file
current and, on SIGTERM/SIGINT, stops every node it runs now (restarted ones included) and removes
the pid file. ``cluster up`` runs it in the foreground, ``cluster up --detach`` as a background
process (:func:`start_detached`). ``cluster down`` (:func:`stop_from_pid_file`) signals the
supervisor, waits for it, then makes sure that no node listed in the pid file is left (SIGTERM,
then SIGKILL after the grace period).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .._proc import pid_alive
from .cluster import LocalCluster, Restart
from .spec import ClusterSpec

SUPERVISOR = "supervisor"


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def _is_distree(pid: int, word: bytes) -> bool:
    """True if ``pid`` runs ``distree <word>`` (guards against pids reused by other programs)."""
    cmd = _cmdline(pid)
    if cmd is None:
        return pid_alive(pid)
    return word in cmd and any(b"distree" in c for c in cmd)


def read_pid_file(spec: ClusterSpec) -> dict[str, int]:
    f = spec.pid_file
    try:
        return {str(k): int(v) for k, v in json.loads(f.read_text()).items()}
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"pid file {f} is corrupt ({e}); stop the nodes by hand and delete it") from e


def running_pids(spec: ClusterSpec) -> dict[str, int]:
    """The processes of the pid file that still run (nodes and supervisor); {} without a pid file."""
    out = {}
    for name, pid in read_pid_file(spec).items():
        if pid_alive(pid) and _is_distree(pid, b"cluster" if name == SUPERVISOR else b"serve"):
            out[name] = pid
    return out


class Supervision:
    """Restart counts as Prometheus metrics, and the loop of a supervisor (see the module doc)."""

    def __init__(self, cluster: LocalCluster, metrics_port: int = 0) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.cluster = cluster
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "distree_node_restarts", "Restarts of a node by the supervisor", ["node"], registry=self.registry
        )
        self.running = Gauge("distree_node_running", "1 while the node process runs", ["node"], registry=self.registry)
        for k, r in cluster.members():
            self.restarts.labels(node=cluster.name(k, r))
            self.running.labels(node=cluster.name(k, r)).set(1)
        if metrics_port:
            start_http_server(metrics_port, addr="127.0.0.1", registry=self.registry)  # this host only

    def step(self) -> list[Restart]:
        events = self.cluster.supervise()
        for e in events:
            if e.pid is None:
                self.running.labels(node=e.name).set(0)
            else:
                self.restarts.labels(node=e.name).inc()
                self.running.labels(node=e.name).set(1)
        return events

    def run(self, on_event: Callable[[Restart], None], *, poll_s: float = 0.2) -> None:
        """Supervise until SIGTERM/SIGINT; the caller stops the cluster afterwards."""
        stop = {"now": False}

        def on_signal(signum, frame) -> None:  # noqa: ARG001
            stop["now"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["now"]:
            for e in self.step():
                on_event(e)
            time.sleep(poll_s)


def start_detached(
    spec: ClusterSpec,
    *,
    log_dir: Path | None,
    timeout_s: float,
    metrics_port: int = 0,
    grace_s: float = 15.0,
) -> tuple[int, Path]:
    """Start a supervisor process for ``spec`` in the background; return (its pid, its log file) once
    every node is healthy and the supervisor supervises (its pid is in the pid file). Raises
    RuntimeError (with the log's tail) if it exits while starting."""
    from .client import wait_healthy
    from .tls import spec_client_tls

    log_file = (log_dir / "supervisor.log") if log_dir is not None else spec.path.with_name(spec.path.name + ".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "distree", "cluster", "up", "--spec", str(spec.path), "--timeout-s", str(timeout_s)]
    cmd += ["--grace-s", str(grace_s)]
    if log_dir is not None:
        cmd += ["--log-dir", str(log_dir)]
    if metrics_port:
        cmd += ["--metrics-port", str(metrics_port)]
    with open(log_file, "ab") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    tls = spec_client_tls(spec)
    end = time.monotonic() + timeout_s + 10
    pending = [n.address for n in spec.nodes]
    while pending or read_pid_file(spec).get(SUPERVISOR) != p.pid:
        if p.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the supervisor exited with code {p.returncode} while starting; {log_file}:\n{tail}")
        if time.monotonic() > end:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            raise TimeoutError(f"the cluster was not healthy after {timeout_s:.0f} s; see {log_file}")
        if not pending:
            time.sleep(0.05)
        elif wait_healthy(pending[0], tls=tls, timeout_s=0.5):
            pending.pop(0)
    return p.pid, log_file


def stop_from_pid_file(spec: ClusterSpec, timeout_s: float = 15.0) -> dict[str, str]:
    """Stop the cluster of ``<spec>.pids``: signal its supervisor (which stops its nodes, restarted ones
    included), then SIGTERM any listed node still running and SIGKILL it after ``timeout_s``. Returns
    node name -> "stopped" | "killed" | "not running"."""
    f = spec.pid_file
    if not f.is_file():
        raise FileNotFoundError(f"no pid file {f}: no cluster of this spec was started with `distree cluster up`")
    listed = read_pid_file(spec)
    sup = listed.pop(SUPERVISOR, None)
    alive = running_pids(spec)
    result = {name: ("stopping" if name in alive else "not running") for name in listed}
    end = time.monotonic() + timeout_s
    if sup is not None and alive.get(SUPERVISOR) == sup:
        os.kill(sup, signal.SIGTERM)
        while pid_alive(sup) and time.monotonic() < end + 5:
            with contextlib.suppress(ValueError):
                for name, pid in read_pid_file(spec).items():  # a node restarted meanwhile
                    if name != SUPERVISOR and pid != listed.get(name):
                        listed[name] = pid
                        result[name] = "stopping"
            time.sleep(0.1)
    for name, pid in listed.items():
        if result[name] == "stopping" and pid_alive(pid) and _is_distree(pid, b"serve"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    for name, pid in listed.items():
        if result[name] != "stopping":
            continue
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            result[name] = "killed"
        else:
            result[name] = "stopped"
    if sup is not None and pid_alive(sup) and _is_distree(sup, b"cluster"):
        os.kill(sup, signal.SIGKILL)
    f.unlink(missing_ok=True)
    return result


__all__ = ["Supervision", "read_pid_file", "running_pids", "start_detached", "stop_from_pid_file"]
