"""`distree cluster up` supervises: a node killed with SIGKILL is restarted (counted, exported as a metric)
and serves again; `distree cluster down` then leaves no process of the cluster behind (checked by pid)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _rt import write_spec

from distree._proc import pid_alive
from distree.runtime import ClusterClient, wait_healthy
from distree.runtime.cluster import free_ports

pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("supervisor")]


def _distree(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distree", *args], capture_output=True, text=True, timeout=timeout)


def _pids(spec) -> dict[str, int]:
    return json.loads(spec.pid_file.read_text()) if spec.pid_file.exists() else {}


def _procs_of(spec_path: Path) -> list[int]:
    """Every process on this machine whose command line names the spec file."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if str(spec_path).encode() in (d / "cmdline").read_bytes() and pid_alive(int(d.name)):
                    out.append(int(d.name))
    return out


def test_cluster_up_restarts_a_killed_node_and_down_stops_everything(rt):
    mport = free_ports(1)[0]
    spec = write_spec(rt, "supervised", policy=rt.last_exit, replicas={2: 2})
    seen: set[int] = set()
    try:
        up = _distree("cluster", "up", "--spec", str(spec.path), "--detach", "--metrics-port", str(mport),
                      "--log-dir", str(rt.root / "supervised-logs"))  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert "supervisor pid" in up.stdout and "2.2" in up.stdout, up.stdout
        pids = _pids(spec)
        assert set(pids) == {"1", "2.1", "2.2", "3", "4", "supervisor"}, pids
        seen |= set(pids.values())
        os.kill(pids["3"], signal.SIGKILL)
        t0 = time.monotonic()
        while _pids(spec).get("3") in (None, pids["3"]):
            assert time.monotonic() - t0 < 60, "node 3 was not restarted"
            time.sleep(0.05)
        new = _pids(spec)["3"]
        seen.add(new)
        assert wait_healthy(spec.node(3).address, timeout_s=90)
        back_s = time.monotonic() - t0
        with ClusterClient(spec.addresses(1)) as client:
            end = time.monotonic() + 30
            while True:  # node 2 reconnects to the restarted node 3: answers from node 4 again
                r = client.infer(rt.images[:1])
                if int(r.exit_node[0]) == 4 and not r.degraded[0]:
                    break
                assert time.monotonic() < end, "the restarted node 3 does not serve"
                time.sleep(0.1)
        serving_s = time.monotonic() - t0
        print(f"node 3 healthy {back_s:.1f} s after SIGKILL, serving through the chain after {serving_s:.1f} s")
        assert back_s < 60  # generous: a node process imports torch and loads its segment (seconds)
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert 'distree_node_restarts_total{node="3"} 1.0' in text, text
        assert 'distree_node_restarts_total{node="2.2"} 0.0' in text
        down = _distree("cluster", "down", "--spec", str(spec.path))
        assert down.returncode == 0, down.stdout + down.stderr
        assert down.stdout.count("stopped") == 5, down.stdout
        assert not spec.pid_file.exists()
        seen |= set(_pids(spec).values())
        left = [p for p in seen if pid_alive(p)]
        assert not left, f"processes left after `cluster down`: {left}"
        assert not _procs_of(spec.path), "a process of the cluster survived"
    finally:
        for p in seen | set(_pids(spec).values()) | set(_procs_of(spec.path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        spec.pid_file.unlink(missing_ok=True)


def test_supervise_backs_off_and_counts(rt):
    """LocalCluster.supervise: an exited node is restarted after a backoff that doubles while it keeps
    exiting soon after its start, and its restarts are counted."""
    from distree.runtime import LocalCluster

    spec = write_spec(rt, "backoff")
    cluster = LocalCluster(spec)

    class Dead:
        pid, returncode = 1, 1

        def poll(self):
            return 1

    cluster.procs[(3, 1)] = Dead()  # type: ignore[assignment]
    cluster._started_at[(3, 1)] = 0.0
    started = []
    cluster.start_node = lambda k, r=1: started.append((k, r)) or Dead()  # type: ignore[method-assign]
    ev = cluster.supervise(now=1.0)
    assert [(e.name, e.pid, e.wait_s) for e in ev] == [("3", None, 0.2)]
    assert cluster.supervise(now=1.1) == [] and not started
    ev = cluster.supervise(now=1.25)
    assert started == [(3, 1)] and ev[0].restarts == 1 and cluster.restarts[(3, 1)] == 1
    cluster._started_at[(3, 1)] = 1.25
    ev = cluster.supervise(now=2.0)  # exited again soon after: twice the wait
    assert ev[0].wait_s == pytest.approx(0.4)
    cluster._started_at[(3, 1)] = 2.0
    cluster._due.clear()
    ev = cluster.supervise(now=100.0)  # after a long run: the first wait again
    assert ev[0].wait_s == pytest.approx(0.2)
