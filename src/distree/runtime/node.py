"""One node of a chain: segment K + exit K, the exit policy, a batcher and a link to node K+1.

Request path. Rows (one sample each) arrive as *chunks* (one ModelInfer call on node 1, one Forward
call on later nodes), wait in a queue, and are computed in batches by one worker (dynamic batching:
up to ``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` after the first). For every
batch the node runs its segment and exit head in a worker thread (so the event loop keeps receiving
and answering while it computes), stretches the time by its emulated speed profile, and lets the
policy decide per row. Rows that exit are answered at once; the rest go to node K+1 as one smaller
batch in a single Forward call, whose response carries every row's answer (from K+1 or any node
after it). Calls nest, so the answer travels back along the open calls to node 1 and the client.

Failure and deadlines. Node K keeps its own exit's answer for every row it forwarded until the
answer comes back. If the call fails (successor down, too slow, cancelled), node K answers those
rows itself and marks them degraded: no request is lost while any node that computed it is alive.
Each row has a deadline by which this node must answer its caller; a forward gets that deadline
minus the answer's way back (half the link's measured round-trip transport time, EWMA, plus
``return_margin_ms``) as the successor's deadline and its gRPC timeout, so every node keeps time to
answer itself if the successor is late. The policy's QoS rule exits early when the estimated time
to the successor's answer (EWMA transport round trip + the successor's EWMA queue + compute time)
exceeds what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from ..policies import ExitInputs, ExitPolicy, decode_state, encode_state, load_policy, softmax
from .estimates import Ewma, Samples
from .metrics import NodeMetrics
from .protos import node_pb2, node_pb2_grpc
from .spec import ClusterSpec
from .tensors import BadTensor, check_finite, from_proto, to_proto
from .tls import ClientTLS, node_client_tls, server_credentials

log = logging.getLogger(__name__)

REASONS = ("deadline", "successor-unavailable", "successor-timeout", "successor-error")


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.enable_retries", 0),
    ]


def make_aio_channel(address: str, tls: ClientTLS | None, max_message_bytes: int) -> grpc.aio.Channel:
    opts = channel_options(max_message_bytes)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, tls.credentials(), options=opts + tls.options())


@dataclass(eq=False, slots=True)
class Chunk:
    """Rows that arrived together; answered together once every row has its answer."""

    ids: list[str]
    x: np.ndarray  # (b, ...) float32
    state: dict[str, np.ndarray]
    deadline: np.ndarray  # (b,) monotonic seconds by which this node must answer; inf = none
    fut: asyncio.Future
    has_deadline: bool = True  # False only when every row's deadline is inf (skips the deadline arithmetic)
    t_in: float = field(default_factory=time.monotonic)
    answers: list[node_pb2.Answer | None] = field(default_factory=list)
    pending: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0
    downstream_s: float = 0.0
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.answers = [None] * len(self.ids)
        self.pending = len(self.ids)

    def set(self, i: int, ans: node_pb2.Answer) -> None:
        if self.answers[i] is None:
            self.answers[i] = ans
            self.pending -= 1
            if self.pending == 0 and not self.fut.done():
                self.fut.set_result(None)


class Successor:
    """A persistent channel to node K+1, its up/down state, and reconnection with backoff."""

    def __init__(
        self,
        address: str,
        tls: ClientTLS | None,
        max_message_bytes: int,
        metrics: NodeMetrics,
        reconnect_max_s: float = 1.0,
    ) -> None:
        from grpc_health.v1 import health_pb2_grpc

        self.address = address
        self.channel = make_aio_channel(address, tls, max_message_bytes)
        self.stub = node_pb2_grpc.ChainNodeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.up = True  # optimistic: the first failure marks it down
        self.metrics = metrics
        self.reconnect_max_s = reconnect_max_s
        self._probe: asyncio.Task | None = None
        self.on_up: list[Any] = []
        metrics.successor_up.set(1)

    def mark_down(self, why: str) -> None:
        if self.up:
            log.warning(
                "successor %s is down (%s); answering locally until it is back",
                self.address,
                why,
                extra={"event": "successor_down", "successor": self.address},
            )
        self.up = False
        self.metrics.successor_up.set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        from grpc_health.v1 import health_pb2

        backoff = 0.05
        while not self.up:
            await asyncio.sleep(backoff)
            try:
                r = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=max(0.5, backoff))
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    self.up = True
                    self.metrics.successor_up.set(1)
                    log.warning(
                        "successor %s is back", self.address, extra={"event": "successor_up", "successor": self.address}
                    )
                    for cb in self.on_up:
                        cb()
                    return
            except grpc.aio.AioRpcError:
                pass
            backoff = min(backoff * 2, self.reconnect_max_s)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.channel.close()


class NodeCore:
    """The compute, batching, policy and forwarding logic of node ``k`` (1-based)."""

    def __init__(
        self,
        spec: ClusterSpec,
        k: int,
        *,
        model: Any = None,
        sidecar: dict | None = None,
        policy: ExitPolicy | None = None,
    ) -> None:
        import torch

        from ..checkpoint import load_checkpoint
        from ..fluctuation import speed_profile_from_spec

        self.spec = spec
        self.k = k
        self.node_spec = spec.node(k)
        torch.set_num_threads(spec.threads)
        if model is None:
            model, sidecar = load_checkpoint(spec.checkpoint)
        self.sidecar = sidecar or {}
        if model.num_nodes != spec.num_nodes:
            raise ValueError(
                f"checkpoint {spec.checkpoint} has {model.num_nodes} segments but the spec lists {spec.num_nodes} "
                "nodes; list one [[nodes]] entry per segment"
            )
        self.policy = policy if policy is not None else load_policy(spec.policy)
        if self.policy.num_nodes != spec.num_nodes:
            raise ValueError(
                f"policy {spec.policy} is for {self.policy.num_nodes} nodes but the cluster has {spec.num_nodes}"
            )
        self.segment = model.segments[k - 1].eval()
        self.exit_head = model.exits[k - 1].eval()
        self.num_classes = int(model.num_classes)
        self.input_shape = tuple(int(s) for s in model.input_shape)
        cost = model.cost_profile()
        self.in_shape = self.input_shape if k == 1 else tuple(int(s) for s in cost.hop_shapes[k - 2])
        self.flops = cost.segment_flops[k - 1] + cost.exit_flops[k - 1]
        self.model_label = str(self.sidecar.get("model", getattr(model, "model_name", "")))
        self.is_last = k == spec.num_nodes
        self.speed = speed_profile_from_spec(self.node_spec.speed) if self.node_spec.speed else None
        nominal = self.node_spec.nominal_compute_ms
        self.nominal_s = None if nominal is None else nominal / 1000.0  # emulated device: seconds per row
        self.t0 = time.monotonic()
        self.margin = spec.return_margin_ms / 1000.0
        self.max_batch = spec.batching.max_batch_size
        self.max_delay = spec.batching.max_queue_delay_ms / 1000.0
        self.metrics = NodeMetrics(k)
        self.est_compute = Ewma(0.2)
        self.est_pure = Ewma(0.2)  # real compute seconds per batch, before speed emulation
        self.est_rows = Ewma(0.2, default=1.0)
        self.inline_max_s = spec.inline_compute_ms / 1000.0
        self.est_queue = Ewma(0.2)
        self.est_hop = Ewma(0.2, default=0.001)
        self.est_next = Ewma(0.2)
        self.hop_samples = Samples()
        self.wire_samples = Samples()  # round trip minus the callee's whole handler time
        self.compute_samples = Samples()
        self.counts: dict[str, int] = {"rows": 0, "batches": 0, "exits_here": 0, "forwards": 0}
        self.degraded_counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"node{k}-compute")
        self.queue: deque[Chunk] = deque()  # chunks waiting while the node is busy (or for a batch)
        self.busy = False  # a batch is being computed (thread, speed emulation): later rows queue
        self.rows_inside = 0  # rows between submit and answer (queued, computing or downstream)
        self._wake: asyncio.Future | None = None  # the worker waits on it for queued rows
        self.successor: Successor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._seq = 0
        self._id_prefix = f"{k}.{os.getpid()}."
        self._exit_node = k
        self._answers_counter = self.metrics.exits_here
        self._warmup()

    # ------------------------------------------------------------------ compute
    def _compute(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, float]:
        import torch

        t = time.perf_counter()
        if not x.flags.writeable:
            x = x.copy()
        with torch.inference_mode():
            h = self.segment(torch.from_numpy(x))
            logits, feats = self.exit_head(h)
            out_h = None if self.is_last else h.contiguous().numpy()
            lg = logits.float().numpy()
            ft = feats.float().numpy()
        return out_h, lg, ft, time.perf_counter() - t

    def _warmup(self) -> None:
        x = np.zeros((1, *self.in_shape), dtype=np.float32)
        times = [self._compute(x)[3] for _ in range(3)]
        c = min(times)
        self.est_pure.default = c
        c = self.emulated_s(0.0, c, 1)
        self.est_compute.default = c
        self.est_next.default = c  # until the successor tells its own (see _seed)

    def emulated_s(self, t: float, real: float, rows: int) -> float:
        """Seconds a batch takes on the emulated device: the nominal work (``nominal_compute_ms`` per row,
        else the measured ``real``) stretched by the speed profile from time ``t`` on; never less than ``real``."""
        work = real if self.nominal_s is None else self.nominal_s * rows
        if self.speed is not None:
            work = float(self.speed.stretch(t, work))
        return max(work, real)

    def inline_compute(self, rows: int) -> bool:
        """Compute on the event loop (no thread hand-off) when it is short, else in the compute thread."""
        mode = self.spec.compute_mode
        if mode != "auto":
            return mode == "inline"
        return self.est_pure.value * max(1.0, rows / max(self.est_rows.value, 1.0)) <= self.inline_max_s

    def back_s(self) -> float:
        """Time an answer from the successor needs to get here and be passed on: half the measured
        round-trip transport time of the link (EWMA) plus ``return_margin_ms``."""
        return self.margin + 0.5 * self.est_hop.value

    def est_continue(self) -> float:
        """Estimated seconds from now until the successor's answer for a row forwarded now."""
        return self.est_hop.value + self.est_next.value

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self.is_last:
            nxt = self.spec.node(self.k + 1)
            self.successor = Successor(
                nxt.address, node_client_tls(self.spec, self.node_spec), self.spec.max_message_bytes, self.metrics
            )
            self.successor.on_up.append(lambda: self._spawn(self._seed()))
            self._spawn(self._seed())
        self._tasks.add(asyncio.get_running_loop().create_task(self._worker()))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _seed(self) -> None:
        """Ask the successor for its compute estimate (it includes its speed profile)."""
        assert self.successor is not None
        backoff = 0.05
        for _ in range(40):
            try:
                info = await self.successor.stub.Info(node_pb2.InfoRequest(), timeout=2.0)
                self.est_next.default = info.est_compute_s + info.est_queue_s
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self.successor is not None:
            await self.successor.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ entry
    def next_ids(self, n: int) -> list[str]:
        base = self._seq
        self._seq += n
        p = self._id_prefix
        return [f"{p}{base + i}" for i in range(n)]

    async def submit(
        self,
        ids: list[str],
        x: np.ndarray,
        state: dict[str, np.ndarray],
        deadline: np.ndarray,
        *,
        has_deadline: bool = True,
    ) -> Chunk:
        """Compute rows (or queue them while the node is busy) and wait for all their answers.

        With batching off (``max_batch_size = 1``) a request that finds the node idle runs at once in
        the caller's task: no queue, no worker hand-off, and its forward to the successor is awaited
        in place. Otherwise the rows queue for the worker (see ``_next_batch``).
        """
        loop = asyncio.get_running_loop()
        chunk = Chunk(ids, x, state, deadline, loop.create_future(), has_deadline)
        n = len(ids)
        m = self.metrics
        m.requests.inc(n)
        m.inflight.inc(n)
        self.counts["rows"] += n
        self.rows_inside += n
        try:
            if self.max_batch == 1 and not self.busy and not self.queue:
                try:
                    fwd = await self._run_batch([chunk], direct=True)
                except Exception:
                    log.exception("batch failed", extra={"event": "batch_error"})
                    raise
                if fwd is not None:
                    await fwd
            else:
                self.queue.append(chunk)
                self._kick()
                await chunk.fut
        except asyncio.CancelledError:
            chunk.cancelled = True
            raise
        finally:
            m.inflight.dec(n)
            self.rows_inside -= n
        if chunk.has_deadline:
            now = time.monotonic()
            late = (chunk.deadline[0] < now) if n == 1 else int((chunk.deadline < now).sum())
            if late:
                m.deadline_misses.inc(int(late))
        return chunk

    # ------------------------------------------------------------------ batching
    def _kick(self) -> None:
        w = self._wake
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait_rows(self, timeout: float | None = None) -> bool:
        """Wait until rows are queued (and the node is free); False on timeout."""
        loop = asyncio.get_running_loop()
        while not self.queue or self.busy:
            self._wake = w = loop.create_future()
            try:
                if timeout is None:
                    await w
                else:
                    async with asyncio.timeout(timeout):
                        await w
            except TimeoutError:
                return False
            finally:
                self._wake = None
        return True

    async def _next_batch(self) -> list[Chunk]:
        """Up to ``max_batch_size`` queued rows (whole chunks, oldest first).

        A batch never waits for more rows when nothing else is inside the node (a lone request on an
        idle node is dispatched at once). Under load (other rows queued, computing or downstream) a
        batch that is not full waits for more rows until ``max_queue_delay_ms`` after its first row.
        """
        await self._wait_rows()
        q = self.queue
        first = q.popleft()
        batch = [first]
        n = len(first.ids)
        if self.max_batch > 1:
            until = first.t_in + self.max_delay
            while n < self.max_batch:
                if q:
                    c = q.popleft()
                    batch.append(c)
                    n += len(c.ids)
                    continue
                left = until - time.monotonic()
                if left <= 0 or self.rows_inside <= n:
                    break
                self._wake = w = asyncio.get_running_loop().create_future()
                try:
                    async with asyncio.timeout(left):
                        await w
                except TimeoutError:
                    break
                finally:
                    self._wake = None
        return [c for c in batch if not c.cancelled]

    async def _worker(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a failed batch must not stop the node
                log.exception("batch failed", extra={"event": "batch_error"})
                for c in batch:
                    if not c.fut.done():
                        c.fut.set_exception(e)

    async def _run_batch(self, batch: list[Chunk], direct: bool = False) -> Any:
        """Compute a batch, answer the rows that exit and forward the rest.

        The forward is spawned as its own task, or returned (a coroutine) for the caller to await
        when ``direct``.
        """
        self.busy = True
        try:
            return await self._run_batch_busy(batch, direct)
        finally:
            self.busy = False
            if self.queue:
                self._kick()

    async def _run_batch_busy(self, batch: list[Chunk], direct: bool) -> Any:
        t_start = time.monotonic()
        if len(batch) == 1:
            c0 = batch[0]
            x, state, deadline, ids = c0.x, c0.state, c0.deadline, c0.ids
            has_deadline = c0.has_deadline
        else:
            x = np.concatenate([c.x for c in batch])
            deadline = np.concatenate([c.deadline for c in batch])
            ids = [i for c in batch for i in c.ids]
            has_deadline = any(c.has_deadline for c in batch)
            keys = set().union(*(c.state.keys() for c in batch))
            state = (
                {key: np.concatenate([c.state[key] for c in batch]) for key in keys}
                if all(set(c.state) == keys for c in batch)
                else {}
            )
        m = self.metrics
        for c in batch:
            c.queue_s = q = t_start - c.t_in
            m.queue_s.observe(q)
            self.est_queue.update(q)
        nb = len(ids)
        if self.inline_compute(nb):
            h, logits, feats, real = self._compute(x)
        else:
            h, logits, feats, real = await asyncio.get_running_loop().run_in_executor(self.pool, self._compute, x)
        self.est_pure.update(real)
        self.est_rows.update(nb)
        if self.speed is not None or self.nominal_s is not None:
            extra = self.emulated_s(t_start - self.t0, real, nb) - real
            if extra > 0:
                await asyncio.sleep(extra)
        is_last = self.is_last
        inp = ExitInputs(node=self.k - 1, logits=logits, features=feats, state=state)
        if has_deadline and not is_last:
            inp.remaining_s = deadline - self.margin - time.monotonic()
            inp.continue_s = self.est_continue()
        dec = self.policy.decide(inp)
        exits = np.asarray(dec.exit, dtype=bool).tolist()
        qos = np.asarray(dec.qos, dtype=bool).tolist()
        forced = not is_last and self.successor is not None and not self.successor.up
        # probabilities only for rows answered here (forwarded rows get them from their exit node)
        answer_here = forced or any(exits)
        plist = softmax(logits).tolist() if answer_here else []
        scores = np.asarray(dec.scores, dtype=np.float64)
        compute_s = time.monotonic() - t_start
        self.est_compute.update(compute_s)
        self.compute_samples.add(compute_s)
        m.compute_s.observe(compute_s)
        m.batch.observe(nb)
        self.counts["batches"] += 1
        if len(batch) == 1:
            c0.compute_s = compute_s
            rows = [(c0, i) for i in range(nb)]
        else:
            rows = []
            for c in batch:
                c.compute_s = compute_s
                rows.extend((c, i) for i in range(len(c.ids)))
        if not answer_here:
            go = list(range(nb))
        else:
            go = []
            slist = scores.tolist()
            for j in range(nb):
                if exits[j]:
                    reason = "deadline" if qos[j] else ""
                elif forced:
                    reason = "successor-unavailable"
                else:
                    go.append(j)
                    continue
                c, i = rows[j]
                c.set(i, self._answer(ids[j], plist[j], slist[j], reason))
        if not go:
            return None
        if len(go) == nb:
            fwd = self._forward(rows, ids, h, dec.state or {}, deadline, has_deadline, logits, scores)
        else:
            gi = np.asarray(go)
            sub_state = {key: v[gi] for key, v in dec.state.items()} if dec.state else {}
            fwd = self._forward(
                [rows[j] for j in go],
                [ids[j] for j in go],
                h[gi],
                sub_state,
                deadline[gi],
                has_deadline,
                logits[gi],
                scores[gi],
            )
        if direct:
            return fwd
        self._spawn(fwd)
        return None

    def _answer(self, rid: str, probs: list[float], score: float, reason: str) -> node_pb2.Answer:
        self.counts["exits_here"] += 1
        self._answers_counter.inc()
        if reason:
            self.degraded_counts[reason] = self.degraded_counts.get(reason, 0) + 1
            self.metrics.degraded.labels(node=self.metrics.node, reason=reason).inc()
            return node_pb2.Answer(
                request_id=rid,
                exit_node=self._exit_node,
                degraded=True,
                reason=reason,
                probs=probs,
                score=score if math.isfinite(score) else 0.0,
            )
        return node_pb2.Answer(
            request_id=rid, exit_node=self._exit_node, probs=probs, score=score if math.isfinite(score) else 0.0
        )

    # ------------------------------------------------------------------ forwarding
    async def _forward(
        self,
        rows: list[tuple[Chunk, int]],
        ids: list[str],
        h: np.ndarray,
        state: dict[str, np.ndarray],
        deadline: np.ndarray,
        has_deadline: bool,
        logits: np.ndarray,
        scores: np.ndarray,
    ) -> None:
        """Send rows to the successor; answer each with this node's exit (degraded) if no answer comes back."""
        assert self.successor is not None
        t = time.monotonic()
        timeout = self.spec.forward_timeout_s
        dl_unix: list[float] | np.ndarray
        if has_deadline and len(ids) == 1:
            respond_by = float(deadline[0]) - self.back_s()
            if respond_by != math.inf:
                timeout = min(timeout, respond_by - t)
                dl_unix = [time.time() + (respond_by - t)]
            else:
                dl_unix = [0.0]
        elif has_deadline:
            respond_by = deadline - self.back_s()
            finite = np.isfinite(respond_by)
            if finite.all():
                timeout = min(timeout, float(respond_by.max()) - t)
            dl_unix = np.where(finite, time.time() + (respond_by - t), 0.0).tolist()
        else:
            dl_unix = [0.0] * len(ids)
        reason = ""
        resp = None
        if timeout <= 0:
            reason = "deadline"
        else:
            req = node_pb2.ForwardRequest(
                request_ids=ids,
                features=to_proto(h),
                policy_state=encode_state(state) if state else b"",
                deadline_unix_s=dl_unix,
                from_node=self.k,
            )
            self.counts["forwards"] += 1
            try:
                resp = await self.successor.stub.Forward(req, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    reason = "successor-timeout"
                elif code == grpc.StatusCode.UNAVAILABLE:
                    reason = "successor-unavailable"
                    self.successor.mark_down(f"{code.name}: {e.details()}")
                else:
                    reason = "successor-error"
                    log.warning(
                        "successor %s failed a forward: %s %s",
                        self.successor.address,
                        code.name,
                        e.details(),
                        extra={"event": "forward_error"},
                    )
        rtt = time.monotonic() - t
        got: dict[str, node_pb2.Answer] = {}
        if resp is not None:
            hop = rtt - resp.compute_s - resp.downstream_s
            self.hop_samples.add(hop)
            self.wire_samples.add(rtt - resp.server_s)
            self.metrics.hop_s.observe(hop)
            self.est_hop.update(max(hop - resp.queue_s, 0.0))
            self.est_next.update(resp.queue_s + resp.compute_s)
            got = {a.request_id: a for a in resp.answers}
        probs = None
        for j, (c, i) in enumerate(rows):
            c.downstream_s = rtt
            a = got.get(ids[j])
            if a is None:
                if probs is None:
                    probs = softmax(logits)
                a = self._answer(ids[j], probs[j].tolist(), float(scores[j]), reason or "successor-error")
            c.set(i, a)

    # ------------------------------------------------------------------ info
    def info(self) -> node_pb2.InfoResponse:
        stats = {
            "counts": self.counts,
            "degraded": self.degraded_counts,
            "hop_s": self.hop_samples.summary(),
            "wire_s": self.wire_samples.summary(),
            "compute_s": self.compute_samples.summary(),
            "est_continue_s": self.est_continue(),
            # the latest samples themselves (newest last), for medians over a chosen stretch of requests
            "recent": {
                "hop_s": self.hop_samples.last(512),
                "wire_s": self.wire_samples.last(512),
                "compute_s": self.compute_samples.last(512),
            },
        }
        return node_pb2.InfoResponse(
            node=self.k,
            num_nodes=self.spec.num_nodes,
            model=self.model_label,
            policy=self.policy.name,
            est_compute_s=self.est_compute.value,
            est_queue_s=self.est_queue.value,
            est_hop_s=self.est_hop.value,
            est_next_s=self.est_next.value,
            successor_up=bool(self.successor is None or self.successor.up),
            stats_json=json.dumps(stats),
        )


class ChainNodeServicer(node_pb2_grpc.ChainNodeServicer):
    def __init__(self, core: NodeCore) -> None:
        self.core = core

    async def Forward(self, request: node_pb2.ForwardRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        core = self.core
        t_in = time.monotonic()
        try:
            if core.k == 1:
                raise BadTensor("node 1 takes requests over the Open Inference Protocol (ModelInfer), not Forward")
            x = from_proto(
                request.features, dtype="float32", row_shape=core.in_shape, max_rows=core.spec.max_request_batch
            )
            b = x.shape[0]
            ids = list(request.request_ids)
            if len(ids) != b or (b > 1 and len(set(ids)) != b):
                raise BadTensor(f"need {b} distinct request_ids (one per row), got {len(ids)}")
            dls = request.deadline_unix_s
            if len(dls) not in (0, b):
                raise BadTensor(f"need 0 or {b} deadlines (one per row), got {len(dls)}")
            state = decode_state(request.policy_state) if request.policy_state else {}
            for key, v in state.items():
                if v.shape[:1] != (b,):
                    raise BadTensor(f"policy state {key!r} has leading dimension {v.shape[:1]}, expected ({b},)")
            check_finite(x, "features")
        except (BadTensor, ValueError) as e:
            core.metrics.rejected.labels(node=core.metrics.node, code="INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # unreachable: abort raises
        now = time.monotonic()
        tr = context.time_remaining()
        if b == 1:
            d = math.inf
            if dls and dls[0] > 0:
                d = now + (dls[0] - time.time())
            if tr is not None:
                d = min(d, now + tr)
            deadline = np.array([d])
            has_deadline = d != math.inf
        else:
            deadline = np.full(b, np.inf)
            if dls:
                a = np.asarray(dls, dtype=np.float64)
                deadline = np.where(a > 0, now + (a - time.time()), np.inf)
            if tr is not None:
                deadline = np.minimum(deadline, now + tr)
            has_deadline = bool(np.isfinite(deadline).any())
        chunk = await core.submit(ids, x, state, deadline, has_deadline=has_deadline)
        return node_pb2.ForwardResponse(
            answers=chunk.answers,
            compute_s=chunk.compute_s,
            queue_s=chunk.queue_s,
            downstream_s=chunk.downstream_s,
            est_compute_s=core.est_compute.value,
            est_continue_s=core.est_continue(),
            server_s=time.monotonic() - t_in,
        )

    async def Info(self, request: node_pb2.InfoRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        return self.core.info()


# ---------------------------------------------------------------------- process entry
async def serve_node(
    spec: ClusterSpec,
    k: int,
    *,
    grace_s: float = 10.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run node ``k`` until SIGTERM/SIGINT (or ``stop``); then drain in-flight requests and exit."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    from .kserve import SERVICE, KServeServicer

    node = spec.node(k)
    core = NodeCore(spec, k)
    server = grpc.aio.server(options=channel_options(spec.max_message_bytes))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    node_pb2_grpc.add_ChainNodeServicer_to_server(ChainNodeServicer(core), server)
    services = ["", "distree.node.v1.ChainNode"]
    if k == 1:
        KServeServicer(core).register(server)
        services.append(SERVICE)
    creds = server_credentials(spec, node)
    port = server.add_secure_port(node.listen, creds) if creds else server.add_insecure_port(node.listen)
    if port == 0:
        raise OSError(f"node {k} could not listen on {node.listen} (port in use or address not local)")
    if node.metrics_port:
        core.metrics.serve(node.metrics_port)
    await core.start()
    await server.start()
    # everything allocated so far (model, modules, imports) lives as long as the process: keep it out of
    # the garbage collector's passes, so collections during requests only look at per-request objects
    gc.collect()
    gc.freeze()
    for s in services:
        await health.set(s, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "node %d serving segment %d on %s",
        k,
        k,
        node.listen,
        extra={"event": "serving", "node": k, "listen": node.listen, "tls": spec.tls is not None},
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("node %d draining", k, extra={"event": "draining", "node": k})
    await health.enter_graceful_shutdown()
    await server.stop(grace_s)
    await core.close()
    log.info("node %d stopped", k, extra={"event": "stopped", "node": k})


def run_node(spec: ClusterSpec, k: int, grace_s: float = 10.0) -> None:
    asyncio.run(serve_node(spec, k, grace_s=grace_s))
