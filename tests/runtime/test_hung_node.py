"""A hung node (SIGSTOP: its connections stay open, nothing answers) under a stream of requests without
deadlines: its predecessor's hop timeout (from the measured round trips) sets it aside, the rows are
answered one node earlier as ``successor-timeout``, nothing is lost, and after SIGCONT it is used again."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest
from _rt import running, write_spec

from distree.runtime import ClusterClient
from distree.runtime.client import infer_open_loop

pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("hung")]

N, RATE = 200, 25.0  # an open-loop stream of 8 s


def test_sigstop_of_node3_keeps_latency_low_and_loses_nothing(rt):
    spec = write_spec(rt, "hung", policy=rt.last_exit)
    xs = [rt.images[i % len(rt.images)][None] for i in range(N)]
    with running(spec) as cluster, ClusterClient(spec.addresses(1)) as client:
        for i in range(150):  # round trips for the hop timeouts to follow (p99 of 150: not just the slowest)
            r = client.infer(rt.images[i % 8][None], rpc_timeout_s=None)
            assert int(r.exit_node[0]) == 4 and not r.degraded[0]
        pid = cluster.procs[(3, 1)].pid
        out: list = []
        sender = threading.Thread(
            target=lambda: out.extend(infer_open_loop(client, xs, np.arange(N) / RATE, rpc_timeout_s=None))
        )
        sender.start()
        try:
            time.sleep(1.5)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(4.0)
        finally:
            os.kill(pid, signal.SIGCONT)
        sender.join(120)
        assert not sender.is_alive()
        errors = [r for r in out if isinstance(r, grpc.RpcError)]
        assert not errors, f"{len(errors)} requests lost, e.g. {errors[0].code()}: {errors[0].details()}"
        assert len(out) == N
        lat = np.array([r.latency_s for r in out])
        # the bound the hop timeout is for: a 30 s wait per request without it (the gRPC default cap)
        assert np.quantile(lat, 0.99) < 1.5, f"p99 {np.quantile(lat, 0.99):.3f} s, max {lat.max():.3f} s"
        exits = np.array([int(r.exit_node[0]) for r in out])
        degraded = np.array([bool(r.degraded[0]) for r in out])
        reasons = {r.reasons[0] for r in out if r.degraded[0]}
        assert degraded.sum() >= RATE, "the requests of the hung seconds were answered earlier"
        np.testing.assert_array_equal(degraded, exits < 4)
        assert "successor-timeout" in reasons and reasons <= {"successor-timeout", "successor-unavailable"}, reasons
        assert (exits[degraded] == 2).sum() >= RATE, "node 2 answers for the hung node 3"
        assert set(exits[degraded].tolist()) <= {2, 3}  # (node 3, just woken, may time out its own hop once)
        # after SIGCONT node 3 answers again
        end = time.monotonic() + 30
        while True:
            r = client.infer(rt.images[:1], rpc_timeout_s=None)
            if int(r.exit_node[0]) == 4 and not r.degraded[0]:
                break
            assert time.monotonic() < end, "node 3 was not used again after SIGCONT"
            time.sleep(0.1)
