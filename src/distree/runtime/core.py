"""The core of node K of a chain: compute (segment K + exit K), the emulated device speed, the exit
policy's decision per row, and the answers.

Rows enter through :meth:`NodeCore.submit` (the data-plane entry every servicer uses) and go through
the node's :class:`~distree.runtime.batcher.Batcher`, which calls :meth:`NodeCore.run_batch` one batch
at a time. For each batch the core runs its :class:`Backend` (on the event loop when that is short,
else in a compute thread, so the loop keeps receiving and answering), stretches the time to the
emulated device's (``nominal_compute_ms``, speed profile), and lets the policy decide per row. Rows
that exit are answered at once; the rest go to node K+1 through the :class:`~distree.runtime.hop.Link`
as one smaller batch, and their answers come back with that call. Node K keeps its own exit's answer
for every forwarded row: if the forward brings no answer (successor down, too slow, failed, or no
time left for the hop) it answers the row itself, degraded, with the reason. While the link is down
every row is answered here.

The QoS rule: a row exits early when the time left before its deadline (minus the return margin) is
below the link's estimate of the time to the successor's answer.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..policies import ExitInputs, ExitPolicy, load_policy, softmax
from .backend import Backend
from .batcher import Batch, Batcher, Chunk
from .clock import SYSTEM_CLOCK, Clock
from .estimates import Ewma, Samples
from .hop import REASONS, Link, LinkEstimates
from .link import ChainLink
from .metrics import NodeMetrics
from .node_model import load_node_model
from .protos import node_pb2
from .spec import ClusterSpec
from .tensors import BadTensor


class NodeCore:
    """Compute, policy and answers of node ``k`` (1-based), with its batcher and its link to node k+1.

    ``model``/``sidecar``/``policy`` default to the spec's checkpoint (or, for an ONNX node, its export
    folder: see :mod:`~distree.runtime.node_model`) and policy files; ``backend`` to the node's segment
    and exit through the backend the spec gives it; ``link`` to a gRPC link to the spec's node k+1, over
    all its replicas (none on the last node); ``clock`` to the system clocks. ``replica`` picks which of
    tier k's nodes this is (its speed, certificate, backend).
    """

    def __init__(
        self,
        spec: ClusterSpec,
        k: int,
        *,
        model: Any = None,
        sidecar: dict | None = None,
        policy: ExitPolicy | None = None,
        backend: Backend | None = None,
        link: Link | None = None,
        clock: Clock = SYSTEM_CLOCK,
        replica: int = 1,
    ) -> None:
        from ..fluctuation import speed_profile_from_spec

        self.spec = spec
        self.k = k
        self.replica = replica
        self.node_spec = spec.node(k, replica)
        self.clock = clock
        nm = load_node_model(spec, k, replica, model=model, sidecar=sidecar)
        self.sidecar = nm.sidecar
        self.policy = policy if policy is not None else load_policy(spec.policy)
        if self.policy.num_nodes != spec.num_nodes:
            raise ValueError(
                f"policy {spec.policy} is for {self.policy.num_nodes} nodes but the cluster has {spec.num_nodes}"
            )
        self.is_last = k == spec.num_nodes
        self.backend: Backend = backend or nm.backend
        self.backend_name = nm.backend_name if backend is None else type(backend).__name__
        self.num_classes = nm.num_classes
        self.input_shape = nm.input_shape
        self.in_shape = nm.in_shape
        self.model_label = nm.label
        self.speed = speed_profile_from_spec(self.node_spec.speed) if self.node_spec.speed else None
        nominal = self.node_spec.nominal_compute_ms
        self.nominal_s = None if nominal is None else nominal / 1000.0  # emulated device: seconds per row
        self.t0 = clock.monotonic()  # the speed profile's time 0
        self.margin = spec.return_margin_ms / 1000.0  # kept to send an answer on to the caller
        self.metrics = NodeMetrics(k)
        self.est_compute = Ewma(0.2)  # seconds per batch, emulated speed included
        self.est_pure = Ewma(0.2)  # real compute seconds per batch, before speed emulation
        self.est_rows = Ewma(0.2, default=1.0)
        self.inline_max_s = spec.inline_compute_ms / 1000.0
        self.compute_samples = Samples()
        self.counts: dict[str, int] = {"rows": 0, "batches": 0, "exits_here": 0}
        self.degraded_counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"node{k}-compute")
        self.batcher = Batcher(
            self.run_batch,
            max_batch=spec.batching.max_batch_size,
            max_delay_s=spec.batching.max_queue_delay_ms / 1000.0,
            clock=clock,
        )
        if link is None and not self.is_last:
            link = ChainLink.to_successor(spec, k, metrics=self.metrics, clock=clock, replica=replica)
        self.link = link
        self.no_link = LinkEstimates()  # what the last node reports for a link it does not have
        self._seq = 0
        self._id_prefix = f"{k}.{os.getpid()}."
        self._warmup()

    # ------------------------------------------------------------------ compute
    def _compute(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, float]:
        t = self.clock.monotonic()
        h, logits, feats = self.backend.run(x)
        return h, logits, feats, self.clock.monotonic() - t

    def _warmup(self) -> None:
        x = np.zeros((1, *self.in_shape), dtype=np.float32)
        c = min(self._compute(x)[3] for _ in range(3))
        self.est_pure.default = c
        c = self.emulated_s(0.0, c, 1)
        self.est_compute.default = c
        if self.link is not None:
            self.link.estimates.next.default = c  # until the successor tells its own

    def emulated_s(self, t: float, real: float, rows: int) -> float:
        """Seconds a batch takes on the emulated device: the nominal work (``nominal_compute_ms`` per row,
        else the measured ``real``) stretched by the speed profile from time ``t`` on; never less than ``real``."""
        work = real if self.nominal_s is None else self.nominal_s * rows
        if self.speed is not None:
            work = float(self.speed.stretch(t, work))
        return max(work, real)

    def compute_now_s(self) -> float:
        """What a batch would take if it started now: on an emulated device its nominal work at the speed
        the profile has now; else the recent measured compute (EWMA)."""
        if self.speed is None and self.nominal_s is None:
            return self.est_compute.value
        rows = max(1, round(self.est_rows.value))
        return self.emulated_s(self.clock.monotonic() - self.t0, self.est_pure.value, rows)

    def inline_compute(self, rows: int) -> bool:
        """Compute on the event loop (no thread hand-off) when it is short, else in the compute thread."""
        mode = self.spec.compute_mode
        if mode != "auto":
            return mode == "inline"
        return self.est_pure.value * max(1.0, rows / max(self.est_rows.value, 1.0)) <= self.inline_max_s

    def est_continue(self) -> float:
        """Estimated seconds from now until the successor's answer for a row forwarded now."""
        return self.link.continue_s() if self.link is not None else self.no_link.continue_s()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.link is not None:
            await self.link.start()
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
        if self.link is not None:
            await self.link.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ entry
    def next_ids(self, n: int) -> list[str]:
        base = self._seq
        self._seq += n
        p = self._id_prefix
        return [f"{p}{base + i}" for i in range(n)]

    async def submit(self, ids: list[str], x: np.ndarray, state: dict[str, np.ndarray], deadline: list[float]) -> Chunk:
        """Answer rows ``x`` (ids, policy state, per-row monotonic deadlines, inf = none) and return their
        chunk once every row has an answer (``chunk.answers``, in row order)."""
        n = len(ids)
        chunk = Chunk(ids, x, state, deadline, asyncio.get_running_loop().create_future(), self.clock.monotonic())
        m = self.metrics
        m.requests.inc(n)
        m.inflight.inc(n)
        self.counts["rows"] += n
        try:
            await self.batcher.submit(chunk)
        finally:
            m.inflight.dec(n)
        now = self.clock.monotonic()
        if min(deadline) < now:
            m.deadline_misses.inc(sum(d < now for d in deadline))
        return chunk

    # ------------------------------------------------------------------ one batch
    async def run_batch(self, batch: Batch) -> Awaitable[None] | None:
        """Compute a batch, answer the rows that exit here and return the forward of the others."""
        m = self.metrics
        for c in batch.chunks:
            m.queue_s.observe(c.queue_s)
        nb = len(batch)
        if self.inline_compute(nb):
            h, logits, feats, real = self._compute(batch.x)
        else:
            h, logits, feats, real = await asyncio.get_running_loop().run_in_executor(self.pool, self._compute, batch.x)
        self.est_pure.update(real)
        self.est_rows.update(nb)
        if self.speed is not None or self.nominal_s is not None:
            extra = self.emulated_s(batch.t_start - self.t0, real, nb) - real
            if extra > 0:
                await self.clock.sleep(extra)
        self._refuse_non_finite(batch, logits)
        inp = ExitInputs(node=self.k - 1, logits=logits, features=feats, state=batch.state)
        if not self.is_last and min(batch.deadline) < math.inf:  # no deadline, no QoS rule
            inp.remaining_s = np.asarray(batch.deadline) - (self.margin + self.clock.monotonic())
            inp.continue_s = self.est_continue()
            if self.link is not None:
                self.link.refresh_if_stale()
        try:
            dec = self.policy.decide(inp)
        except ValueError as e:  # the callers' policy state does not fit the policy: refuse them, not the node
            for c in batch.chunks:
                c.fail(BadTensor(str(e)))
            return None
        exits = np.asarray(dec.exit, dtype=bool).tolist()
        qos = np.asarray(dec.qos, dtype=bool).tolist()
        scores = np.asarray(dec.scores, dtype=np.float64)
        forced = self.link is not None and not self.link.up
        # probabilities only when some row is answered here (forwarded rows get them from their exit node)
        answer_here = forced or any(exits)
        plist = softmax(logits).tolist() if answer_here else []
        compute_s = self.clock.monotonic() - batch.t_start
        self.est_compute.update(compute_s)
        self.compute_samples.add(compute_s)
        m.compute_s.observe(compute_s)
        m.batch.observe(nb)
        self.counts["batches"] += 1
        for c in batch.chunks:
            c.compute_s = compute_s
        go: list[int] = []
        if answer_here:
            slist = scores.tolist()
            for j in range(nb):
                if exits[j]:
                    reason = "deadline" if qos[j] else ""
                elif forced:
                    reason = getattr(self.link, "down_reason", "successor-unavailable")
                else:
                    go.append(j)
                    continue
                batch.set(j, self._answer(batch.ids[j], plist[j], slist[j], reason))
        else:
            go = list(range(nb))
        if any(c.error is not None for c in batch.chunks):  # refused rows go nowhere
            go = [j for j in go if batch.rows[j][0].error is None]
        if not go:
            return None
        state, deadline = dec.state or {}, batch.deadline
        assert h is not None  # rows go on only from a node with a successor, whose segment returns its output
        if len(go) < nb:  # the rows that go on (no copies when all do)
            gi = np.asarray(go)
            h, logits, scores = h[gi], logits[gi], scores[gi]
            state = {key: v[gi] for key, v in state.items()}
            deadline = [deadline[j] for j in go]
        return self._forward(batch, go, h, state, deadline, logits, scores)

    def _refuse_non_finite(self, batch: Batch, logits: np.ndarray) -> None:
        """Refuse every request with a row whose logits are not finite (never answer NaN with OK)."""
        finite = np.isfinite(logits).all(axis=1)
        if finite.all():
            return
        for j in np.flatnonzero(~finite).tolist():
            c, i = batch.rows[j]
            c.fail(
                BadTensor(
                    f"row {i} of the request makes node {self.k} compute non-finite logits: its input is out of "
                    "the range the model was trained on; send images normalised as the checkpoint says"
                )
            )

    async def _forward(
        self,
        batch: Batch,
        go: list[int],
        h: np.ndarray,
        state: dict[str, np.ndarray],
        deadline: list[float],
        logits: np.ndarray,
        scores: np.ndarray,
    ) -> None:
        """Forward rows ``go`` of the batch; answer each with this node's exit (degraded) if no answer comes back."""
        assert self.link is not None
        ids = [batch.ids[j] for j in go]
        fwd = await self.link.forward(ids, h, state, deadline)
        probs = None
        for n, j in enumerate(go):
            c, i = batch.rows[j]
            c.downstream_s = fwd.rtt_s
            a = fwd.answers.get(ids[n])
            if a is None:
                if probs is None:
                    probs = softmax(logits)
                a = self._answer(ids[n], probs[n].tolist(), float(scores[n]), fwd.reason or "successor-error")
            c.set(i, a)

    def _answer(self, rid: str, probs: list[float], score: float, reason: str) -> node_pb2.Answer:
        """This node's answer for a row; ``reason`` (one of ``REASONS``) marks it degraded."""
        self.counts["exits_here"] += 1
        self.metrics.exits_here.inc()
        a = node_pb2.Answer(request_id=rid, exit_node=self.k, probs=probs, score=score if math.isfinite(score) else 0.0)
        if reason:
            a.degraded, a.reason = True, reason
            self.degraded_counts[reason] += 1
            self.metrics.degraded.labels(node=self.metrics.node, reason=reason).inc()
        return a
