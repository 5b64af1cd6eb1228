"""Emulated speed: a node's online compute estimate follows its speed profile."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest
from _rt import write_spec

from distree.runtime import load_spec
from distree.runtime.core import NodeCore

pytestmark = pytest.mark.xdist_group("runtime-speed")


def test_compute_estimate_follows_the_speed_profile(rt, tmp_path):
    trace = tmp_path / "speed.txt"
    trace.write_text("# time_s factor\n0 1.0\n0.6 0.02\n")
    spec = write_spec(rt, "speed", node_extra={4: {"speed": {"kind": "trace", "path": str(trace), "loop": False}}})
    spec = load_spec(spec.path)
    shape = tuple(rt.trace.cost.hop_shapes[2])

    async def run() -> tuple[float, float]:
        core = NodeCore(spec, 4)
        await core.start()
        core.t0 = time.monotonic()  # the profile's clock starts now
        x = np.zeros((1, *shape), np.float32)
        fast: list[float] = []
        slow = 0.0
        try:
            for i in range(100_000):
                elapsed = time.monotonic() - core.t0
                await core.submit([f"r{i}"], x, {}, [math.inf] * 1)
                if 0.1 < elapsed < 0.5:
                    fast.append(core.est_compute.value)
                elif elapsed > 1.0:
                    slow = core.est_compute.value
                    break
        finally:
            await core.close()
        return float(np.median(fast)), slow

    fast, slow = asyncio.run(run())
    assert slow > 5 * fast, (fast, slow)  # the speed drops 50x at t = 0.6 s


@pytest.mark.parametrize("speed,expected_ms", [(None, 30.0), ({"kind": "constant", "factor": 0.5}, 60.0)])
def test_nominal_compute_emulates_a_profiled_device(rt, tmp_path, speed, expected_ms):
    """With ``nominal_compute_ms`` the node takes the device's nominal time (stretched by its speed), not the host's."""
    extra: dict = {"nominal_compute_ms": 30.0}
    if speed:
        extra["speed"] = speed
    spec = load_spec(write_spec(rt, f"nominal{expected_ms:.0f}", node_extra={4: extra}).path)
    assert spec.node(4).nominal_compute_ms == 30.0
    shape = tuple(rt.trace.cost.hop_shapes[2])

    async def run() -> tuple[float, list[float]]:
        core = NodeCore(spec, 4)
        await core.start()
        x = np.zeros((1, *shape), np.float32)
        took = []
        try:
            for i in range(6):
                t = time.monotonic()
                await core.submit([f"n{i}"], x, {}, [math.inf] * 1)
                took.append(time.monotonic() - t)
        finally:
            await core.close()
        return core.est_compute.value, took

    est, took = asyncio.run(run())
    assert 0.9 * expected_ms <= 1000 * est <= 1.5 * expected_ms, est
    assert 0.9 * expected_ms <= 1000 * float(np.median(took)) <= 2.0 * expected_ms, took


def test_open_loop_deadlines_count_from_each_send(rt):
    """`infer_open_loop` builds its requests ahead of time but stamps each deadline as the request leaves:
    requests sent long after the first still have their whole budget (they reach the last node)."""
    from _rt import running

    from distree.runtime import ClusterClient
    from distree.runtime.client import infer_open_loop

    spec = write_spec(rt, "openloop", policy=rt.last_exit)
    xs = [rt.images[i % len(rt.images)][None] for i in range(12)]
    with running(spec), ClusterClient(spec.addresses(1)) as client:
        client.infer(xs[0])  # warm-up
        out = infer_open_loop(client, xs, [0.1 * i for i in range(12)], deadline_s=1.0)
    assert [int(r.exit_node[0]) for r in out] == [4] * 12, [tuple(r.reasons) for r in out]
