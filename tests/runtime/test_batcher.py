"""The batcher: chunks into batches (whole chunks, in order), rows mapped back to their chunks, the
direct path without batching, and the load-aware window. A recording ``process`` stands in for the core."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from distree.runtime.batcher import Batch, Batcher, Chunk
from distree.runtime.clock import ManualClock
from distree.runtime.protos import node_pb2


def _chunk(name: str, n: int, t_in: float = 0.0, **state: np.ndarray) -> Chunk:
    fut = asyncio.get_running_loop().create_future()
    x = np.arange(n, dtype=np.float32)[:, None] + 10 * (ord(name[0]) - ord("a"))
    return Chunk([f"{name}{i}" for i in range(n)], x, dict(state), [math.inf] * n, fut, t_in)


class Recorder:
    """Answers every row (exit node 1) and records the batches; forwards wait for ``release``."""

    def __init__(self, forward: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.forward = forward
        self.release = asyncio.Event()

    async def __call__(self, batch: Batch):
        self.batches.append(list(batch.ids))
        if not self.forward:
            for j, rid in enumerate(batch.ids):
                batch.set(j, node_pb2.Answer(request_id=rid, exit_node=1))
            return None

        async def fwd() -> None:
            await self.release.wait()
            for j, rid in enumerate(batch.ids):
                batch.set(j, node_pb2.Answer(request_id=rid, exit_node=2))

        return fwd()


def test_batch_concatenates_chunks_and_maps_rows_back():
    async def go():
        a = _chunk("a", 2, run=np.array([1, 2]))
        b = _chunk("b", 3, run=np.array([3, 4, 5]))
        batch = Batch.of([a, b], t_start=5.0)
        assert batch.ids == ["a0", "a1", "b0", "b1", "b2"] and len(batch) == 5
        np.testing.assert_array_equal(batch.x[:, 0], [0, 1, 10, 11, 12])
        np.testing.assert_array_equal(batch.state["run"], [1, 2, 3, 4, 5])
        batch.set(3, node_pb2.Answer(request_id="b1"))
        assert b.answers[1].request_id == "b1" and b.pending == 2 and a.pending == 2
        for j in (0, 1):
            batch.set(j, node_pb2.Answer(request_id=batch.ids[j]))
        assert a.fut.done() and not b.fut.done()
        # the first answer of a row wins
        batch.set(0, node_pb2.Answer(request_id="late"))
        assert a.answers[0].request_id == "a0"
        # chunks with different state keys never share a batch
        c = _chunk("c", 1, other=np.array([0]))
        assert a.schema() != c.schema() and a.schema() == b.schema()
        with pytest.raises(ValueError, match="share their row shape and policy state schema"):
            Batch.of([a, c], t_start=5.0)

    asyncio.run(go())


def test_chunks_with_another_state_schema_start_a_batch_of_their_own():
    async def go():
        rec = Recorder()
        b = Batcher(rec, max_batch=8, max_delay_s=0.0, clock=ManualClock())
        b.start()
        good = np.array([1], np.int32)
        chunks = [
            _chunk("a", 1, run=good),
            _chunk("b", 1),  # no state: malformed for a policy that carries some
            _chunk("c", 1, run=good),
            _chunk("d", 1, run=np.array([1.0])),  # same key, other dtype
            _chunk("e", 1, run=good),
        ]
        b.busy = True  # all five queue up, then one worker pass takes them
        tasks = [asyncio.ensure_future(b.submit(c)) for c in chunks]
        await asyncio.sleep(0)
        b.busy = False
        b._kick()
        await asyncio.gather(*tasks)
        await b.close()
        return rec.batches

    assert asyncio.run(go()) == [["a0"], ["b0"], ["c0"], ["d0"], ["e0"]]


def test_a_refused_chunk_gets_its_error_and_its_batch_mates_their_answers():
    async def go():
        async def process(batch: Batch):
            for j, rid in enumerate(batch.ids):
                if rid.startswith("bad"):
                    batch.rows[j][0].fail(ValueError("row is bad"))
                batch.set(j, node_pb2.Answer(request_id=rid, exit_node=1))

        b = Batcher(process, max_batch=8, max_delay_s=0.0, clock=ManualClock())
        b.start()
        b.busy = True
        chunks = [_chunk("ok", 2), _chunk("bad", 1), _chunk("ok2", 1)]
        tasks = [asyncio.ensure_future(b.submit(c)) for c in chunks]
        await asyncio.sleep(0)
        b.busy = False
        b._kick()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        await b.close()
        return chunks, res

    chunks, res = asyncio.run(go())
    assert res[0] is None and res[2] is None and isinstance(res[1], ValueError)
    assert [a.request_id for a in chunks[0].answers + chunks[2].answers] == ["ok0", "ok1", "ok20"]
    assert chunks[1].answers == [None]


def test_queued_chunks_share_batches_of_whole_chunks_oldest_first():
    async def go():
        rec = Recorder()
        b = Batcher(rec, max_batch=4, max_delay_s=0.0, clock=ManualClock())
        b.start()
        chunks = [_chunk(n, k) for n, k in (("a", 3), ("b", 3), ("c", 1), ("d", 2))]
        await asyncio.gather(*(b.submit(c) for c in chunks))
        await b.close()
        return rec.batches, chunks

    batches, chunks = asyncio.run(go())
    # whole chunks: a batch takes chunks until it has max_batch rows (the last one may pass it)
    assert batches == [["a0", "a1", "a2", "b0", "b1", "b2"], ["c0", "d0", "d1"]]
    assert all(c.pending == 0 for c in chunks)


def test_without_batching_an_idle_node_processes_in_the_callers_task():
    async def go():
        rec = Recorder(forward=True)
        b = Batcher(rec, max_batch=1, max_delay_s=0.1)  # no worker started: only the direct path can answer
        c = _chunk("a", 1)
        task = asyncio.ensure_future(b.submit(c))
        for _ in range(5):
            await asyncio.sleep(0)
        assert rec.batches == [["a0"]] and not b.busy and b.rows_inside == 1  # computed; forward awaited in place
        rec.release.set()
        await task
        return c, b

    c, b = asyncio.run(go())
    assert c.answers[0].exit_node == 2 and b.rows_inside == 0


def test_a_batch_waits_for_more_rows_only_under_load():
    async def go():
        rec = Recorder(forward=True)
        clock = ManualClock()
        b = Batcher(rec, max_batch=4, max_delay_s=60.0, clock=clock)
        b.start()
        first = asyncio.ensure_future(b.submit(_chunk("a", 1, clock.now)))
        await _until(lambda: rec.batches == [["a0"]])  # alone in the node: not held for the window
        # a0 is downstream now, so the next batch waits for more rows until it is full
        later = [asyncio.ensure_future(b.submit(_chunk(n, 1, clock.now))) for n in "bc"]
        await _until(lambda: not b.queue and b.rows_inside == 3)
        for _ in range(20):
            await asyncio.sleep(0)
        assert rec.batches == [["a0"]]  # b0 and c0 are held for more
        later += [asyncio.ensure_future(b.submit(_chunk(n, 1, clock.now))) for n in "de"]
        await _until(lambda: len(rec.batches) == 2)
        assert rec.batches[1] == ["b0", "c0", "d0", "e0"]
        rec.release.set()
        await asyncio.gather(first, *later)
        await b.close()

    asyncio.run(go())


def test_an_expired_window_closes_the_batch():
    async def go():
        rec = Recorder(forward=True)
        clock = ManualClock()
        b = Batcher(rec, max_batch=4, max_delay_s=0.002, clock=clock)
        b.start()
        first = asyncio.ensure_future(b.submit(_chunk("a", 1, t_in=clock.now)))
        await _until(lambda: len(rec.batches) == 1)
        clock.advance(0.01)  # b0 arrived long ago: its window is over
        second = asyncio.ensure_future(b.submit(_chunk("b", 1, t_in=clock.now - 0.01)))
        await _until(lambda: len(rec.batches) == 2)
        assert rec.batches[1] == ["b0"]
        rec.release.set()
        await asyncio.gather(first, second)
        await b.close()

    asyncio.run(go())


def test_cancelled_chunks_leave_the_queue_and_failures_reach_their_chunks():
    async def go():
        calls: list[list[str]] = []

        async def failing(batch: Batch):
            calls.append(list(batch.ids))
            raise RuntimeError("compute failed")

        b = Batcher(failing, max_batch=8, max_delay_s=0.0)
        gone = _chunk("a", 1)
        gone.cancelled = True
        b.queue.append(gone)
        b.start()
        with pytest.raises(RuntimeError, match="compute failed"):
            await b.submit(_chunk("b", 2))
        await b.close()
        return calls

    assert asyncio.run(go()) == [["b0", "b1"]]


def test_failures_on_the_direct_path_reach_the_caller():
    async def go():
        async def failing(batch: Batch):
            raise ValueError("bad batch")

        b = Batcher(failing, max_batch=1, max_delay_s=0.0)
        with pytest.raises(ValueError, match="bad batch"):
            await b.submit(_chunk("a", 1))
        assert not b.busy and b.rows_inside == 0

    asyncio.run(go())


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(Recorder(), max_batch=0, max_delay_s=0.0)


async def _until(cond, tries: int = 2000) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
