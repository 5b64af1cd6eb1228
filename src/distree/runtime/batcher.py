"""The batcher of a node: chunks of rows, their queue, and dynamic batching.

Rows (one sample each) arrive as *chunks* (one ModelInfer call on node 1, one Forward call on later
nodes). A chunk is answered once every one of its rows has an answer, from this node or from any
node after it. The batcher computes one batch at a time through a ``process`` callback (the node
core) and owns when a batch starts:

- with batching off (``max_batch = 1``) a chunk that finds the node idle is processed at once in the
  caller's task (no queue, no worker hand-off), and the forward that ``process`` returns is awaited
  in place;
- otherwise chunks queue for one worker task, which takes up to ``max_batch`` rows (whole chunks,
  oldest first) and spawns each batch's forward as its own task, so the next batch is computed while
  earlier rows are downstream. A batch waits for more rows, until ``max_delay_s`` after its first
  row, only while other rows are inside the node (queued, computing or downstream): a lone request
  on an idle node is never delayed.

The rows of a batch keep their order; :class:`Batch` maps row ``j`` of the batch back to its chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from .clock import SYSTEM_CLOCK, Clock
from .estimates import Ewma
from .logs import RepeatedErrors
from .protos import node_pb2

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Chunk:
    """Rows that arrived together; answered together once every row has its answer."""

    ids: list[str]
    x: np.ndarray  # (b, ...) float32
    state: dict[str, np.ndarray]
    deadline: list[float]  # per row: monotonic seconds by which this node must answer; inf = none
    fut: asyncio.Future
    t_in: float  # monotonic arrival time
    answers: list[node_pb2.Answer | None] = field(default_factory=list)
    pending: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    downstream_s: float = 0.0
    cancelled: bool = False
    error: Exception | None = None  # the chunk was refused (bad input found while computing)

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.ids)
        self.pending = len(self.ids)

    def schema(self) -> tuple[tuple[str, tuple[int, ...], str], ...]:
        """What a batch must share with this chunk: the row shape and the policy state's keys, row shapes
        and dtypes (a chunk carrying other state never joins the batch, so it cannot spoil its rows)."""
        return (("", tuple(self.x.shape[1:]), self.x.dtype.str),) + tuple(
            sorted((k, tuple(v.shape[1:]), v.dtype.str) for k, v in self.state.items())
        )

    def fail(self, e: Exception) -> None:
        """Refuse the whole chunk with ``e`` (its caller gets the error; its rows get no answers)."""
        if self.error is None:
            self.error = e
            if not self.fut.done():
                self.fut.set_exception(e)

    def set(self, i: int, ans: node_pb2.Answer) -> None:
        """Answer row ``i`` (the first answer of a row wins; a refused chunk takes none)."""
        if self.error is None and self.answers[i] is None:
            self.answers[i] = ans
            self.pending -= 1
            if self.pending == 0 and not self.fut.done():
                self.fut.set_result(None)


@dataclass(eq=False, slots=True)
class Batch:
    """Chunks computed together: their rows concatenated in arrival order."""

    chunks: list[Chunk]
    ids: list[str]
    x: np.ndarray
    state: dict[str, np.ndarray]  # the chunks' states concatenated (every chunk has the same schema)
    deadline: list[float]
    rows: list[tuple[Chunk, int]]  # row j of the batch is row rows[j][1] of chunk rows[j][0]
    t_start: float  # when the batch was taken from the queue (monotonic)

    @classmethod
    def of(cls, chunks: list[Chunk], t_start: float) -> Batch:
        ids: list[str] = []
        deadline: list[float] = []
        rows: list[tuple[Chunk, int]] = []
        for c in chunks:
            ids += c.ids
            deadline += c.deadline
            rows += zip(repeat(c), range(len(c.ids)))
        schema = chunks[0].schema()
        if any(c.schema() != schema for c in chunks[1:]):
            raise ValueError("chunks of one batch must share their row shape and policy state schema")
        state = {k: _cat([c.state[k] for c in chunks]) for k in chunks[0].state}
        return cls(chunks, ids, _cat([c.x for c in chunks]), state, deadline, rows, t_start)

    def __len__(self) -> int:
        return len(self.ids)

    def set(self, j: int, ans: node_pb2.Answer) -> None:
        """Answer row ``j`` of the batch (in its chunk)."""
        c, i = self.rows[j]
        c.set(i, ans)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    """The parts one after another; a single part as it is. Copying a chunk's features into a batch of
    its own would cost 37 us per WRN-16-2 hop (128 KiB) and 134 us per WRN-16-8 hop (512 KiB) on the
    loaded 2-CPU development machine (``np.concatenate`` of one array, timeit)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


#: computes a batch, answers the rows that exit and returns the forward of the others (or None)
Process = Callable[[Batch], Awaitable[Awaitable[None] | None]]


class Batcher:
    """The queue of a node and its dynamic batching window; one batch is processed at a time."""

    def __init__(self, process: Process, *, max_batch: int, max_delay_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.process = process
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.clock = clock
        self.queue: deque[Chunk] = deque()  # chunks waiting while the node is busy (or for a batch)
        self.busy = False  # a batch is being processed (compute, speed emulation): later rows queue
        self.rows_inside = 0  # rows between submit and answer (queued, computing or downstream)
        self.est_queue = Ewma(0.2)  # seconds a chunk waits before its batch starts
        self._wake: asyncio.Future | None = None  # the worker waits on it for queued rows
        self._tasks: set[asyncio.Task] = set()
        self.errors = RepeatedErrors(log, "batch failed", event="batch_error")

    def start(self) -> None:
        """Start the worker (needs a running event loop)."""
        self.spawn(self._worker())

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    def spawn(self, aw: Awaitable[None]) -> None:
        t = asyncio.ensure_future(aw)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def submit(self, chunk: Chunk) -> None:
        """Process the chunk's rows (or queue them) and return once every row has its answer."""
        n = len(chunk.ids)
        self.rows_inside += n
        try:
            if self.max_batch == 1 and not self.busy and not self.queue:
                try:
                    fwd = await self._run([chunk])
                except Exception as e:
                    self.errors.log(e)
                    raise
                if fwd is not None:
                    await fwd
                if chunk.error is not None:
                    raise chunk.error
            else:
                self.queue.append(chunk)
                self._kick()
                await chunk.fut
        except asyncio.CancelledError:
            chunk.cancelled = True
            raise
        finally:
            self.rows_inside -= n

    async def _run(self, chunks: list[Chunk]) -> Awaitable[None] | None:
        self.busy = True
        try:
            t = self.clock.monotonic()
            for c in chunks:
                c.queue_s = t - c.t_in
                self.est_queue.update(c.queue_s)
            return await self.process(Batch.of(chunks, t))
        finally:
            self.busy = False
            if self.queue:
                self._kick()

    def _kick(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, timeout: float | None) -> bool:
        """Wait for a kick; False on timeout."""
        self._wake = w = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await w
            return True
        except TimeoutError:
            return False
        finally:
            self._wake = None

    async def next_batch(self) -> list[Chunk]:
        """Up to ``max_batch`` queued rows (whole chunks, oldest first), waiting for more only under load."""
        while not self.queue or self.busy:
            await self._wait(None)
        q = self.queue
        batch = [q.popleft()]
        n = len(batch[0].ids)
        schema = batch[0].schema()
        until = batch[0].t_in + self.max_delay_s
        while n < self.max_batch:
            if q:
                if q[0].schema() != schema:  # it starts the next batch (arrival order is kept)
                    break
                batch.append(q.popleft())
                n += len(batch[-1].ids)
                continue
            left = until - self.clock.monotonic()
            if left <= 0 or self.rows_inside <= n or not await self._wait(left):
                break
        return [c for c in batch if not c.cancelled]

    async def _worker(self) -> None:
        while True:
            batch = await self.next_batch()
            if not batch:
                continue
            try:
                fwd = await self._run(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed batch must not stop the node
                self.errors.log(e)
                for c in batch:
                    if not c.fut.done():
                        c.fut.set_exception(e)
                continue
            if fwd is not None:
                self.spawn(fwd)
