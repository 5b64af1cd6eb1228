"""Emulated speed: a node's online compute estimate follows its speed profile."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from _rt import write_spec

from distree.runtime import load_spec
from distree.runtime.node import NodeCore

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
                await core.submit([f"r{i}"], x, {}, np.full(1, np.inf))
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
