"""Dispatch inside one node: a lone request is never delayed by batching; concurrent rows share a batch."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
from _rt import write_spec

from distree.runtime import load_spec
from distree.runtime.core import NodeCore


def _rows(rt, n: int) -> np.ndarray:
    return np.zeros((n, *rt.trace.cost.hop_shapes[2]), np.float32)


def test_lone_request_is_not_delayed_by_the_batching_window(rt):
    # a 2 s queue delay: a lone request that waited for more rows would take >= 2 s
    spec = load_spec(write_spec(rt, "dispatch", batching={"max_batch_size": 8, "max_queue_delay_ms": 2000.0}).path)

    async def run() -> tuple[float, dict]:
        core = NodeCore(spec, 4)
        await core.start()
        try:
            t = time.monotonic()
            for i in range(3):
                c = await core.submit([f"lone{i}"], _rows(rt, 1), {}, [math.inf] * 1)
                assert c.answers[0].exit_node == 4
            lone = (time.monotonic() - t) / 3
            # rows submitted together (one event-loop turn) go into one batch, with no wait either
            before = dict(core.counts)
            outs = await asyncio.gather(*(core.submit([f"c{i}"], _rows(rt, 1), {}, [math.inf] * 1) for i in range(5)))
            assert all(o.answers[0].exit_node == 4 for o in outs)
            return lone, {k: core.counts[k] - before[k] for k in before}
        finally:
            await core.close()

    lone, counts = asyncio.run(run())
    assert lone < 1.0, lone  # far below the 2 s window
    assert counts["rows"] == 5 and counts["batches"] == 1, counts


def test_lone_request_runs_in_its_handler_without_batching(rt):
    spec = load_spec(write_spec(rt, "direct").path)

    async def run() -> dict:
        core = NodeCore(spec, 4)
        await core.start()
        try:
            for i in range(4):
                c = await core.submit([f"r{i}"], _rows(rt, 2)[:1], {}, [math.inf] * 1)
                assert c.answers[0].exit_node == 4 and c.queue_s < 1.0
            # several at once: each is computed, in arrival order, none lost
            outs = await asyncio.gather(*(core.submit([f"g{i}"], _rows(rt, 1), {}, [math.inf] * 1) for i in range(6)))
            assert [o.ids[0] for o in outs] == [f"g{i}" for i in range(6)]
            assert all(o.answers[0] is not None for o in outs)
            return dict(core.counts)
        finally:
            await core.close()

    counts = asyncio.run(run())
    assert counts["rows"] == 10 and counts["batches"] == 10, counts
