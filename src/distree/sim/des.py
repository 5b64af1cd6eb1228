"""Discrete-event engine (SimPy): FIFO nodes with dynamic batching, failures, closed-loop clients.

Each node is a SimPy process serving its FIFO queue. With ``max_batch > 1`` it waits, after the
first queued request, until ``max_batch`` requests are queued or the oldest has waited
``max_delay_s``, then runs them as one batch (``compute_s * (1 + batch_marginal * (B - 1))`` of
nominal work, stretched by the device's speed profile); the batch's rows exit individually and the
rest travel on as one message. Links are FIFO: a message starts when the link is free, takes the
exact transfer time of its bytes under the link's bandwidth profile, then its propagation delay.

Failures (``mttf_s > 0``): a node alternates exponential up and down times. Going down, it drops
its queue and the batch in service; those requests are answered by the node before it (the last
one that computed them) and flagged degraded, as in the runtime; at node 1 they are lost. A node
whose successor is down when it decides to continue answers itself, degraded; a message reaching a
node that went down while it travelled is answered by the sender, degraded.

Replicas (``replicas > 1``): a tier is several such nodes, each with its own queue, link and
failures. Each sender (the client, or each replica of the tier before) sends every message to the
next replica in its own round-robin order that is up, like the runtime's gRPC channel with
round_robin and health checking; requests dropped by a replica that fails, or reaching it after it
failed, go to another replica that is up (the runtime's retry), and are degraded only when none is.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from ..policies import ExitInputs, ExitPolicy
from ..trace import Trace
from .results import SimResult, build_records, skips_heads
from .scenario import Cluster
from .workload import Requests, rng_for

log = logging.getLogger(__name__)


class _CountingEnv(simpy.Environment):
    """A SimPy environment that counts processed events."""

    def __init__(self) -> None:
        super().__init__()
        self.events_processed = 0

    def step(self) -> None:
        self.events_processed += 1
        super().step()


class _Node:
    __slots__ = ("busy", "batches", "down_s", "down_since", "in_service", "proc", "queue", "served", "up",
                 "up_event", "wait", "wake", "wake_full")  # fmt: skip

    def __init__(self) -> None:
        self.queue: deque[tuple[int, float, dict[str, np.ndarray]]] = deque()  # (request, arrived, state)
        self.wake: simpy.Event | None = None
        self.wake_full = False
        self.up = True
        self.up_event: simpy.Event | None = None
        self.in_service: list[tuple[int, float, dict[str, np.ndarray]]] = []
        self.proc: simpy.Process | None = None
        self.busy = 0.0
        self.wait = 0.0
        self.served = 0
        self.batches = 0
        self.down_s = 0.0
        self.down_since = 0.0


class _Sim:
    def __init__(self, cluster: Cluster, trace: Trace, policy: ExitPolicy, reqs: Requests, seed: int,
                 clients: int, think_s: float, progress: Callable[[int, int], Any] | None) -> None:  # fmt: skip
        self.env = _CountingEnv()
        self.c = cluster
        self.trace = trace
        self.policy = policy
        self.reqs = reqs
        self.n = cluster.num_nodes
        r = reqs.count
        self.arrival = np.full(r, np.nan) if reqs.arrival_s is None else np.asarray(reqs.arrival_s, dtype=float)
        self.exit0 = np.full(r, -1, dtype=np.int64)
        self.answered = np.full(r, np.nan)
        self.degraded = np.zeros(r, dtype=bool)
        self.qos = np.zeros(r, dtype=bool)
        self.done = np.zeros(r, dtype=bool)
        self.reps = [[_Node() for _ in range(nd.replicas)] for nd in cluster.nodes]  # tier -> replicas
        self.rr: dict[tuple[int, int], int] = {}  # (tier, sending replica; -1 = client) -> next pick
        self.link_free = [np.zeros(nd.replicas) for nd in cluster.nodes]  # uplink, hop 1..N-1: per replica
        self.link_busy = np.zeros(self.n)
        self.waiters: dict[int, simpy.Event] = {}
        self.labels = trace.labels if getattr(policy, "needs_labels", False) else None
        self.clients = clients
        self.think_s = think_s
        self.think_rng = rng_for(seed, 5)
        self.fail_rng = rng_for(seed, 4)
        self.progress = progress
        self.finished = 0
        self.next_req = 0
        self._tick = max(1, r // 200)
        self.skip_heads = skips_heads(policy)
        self.mult = [nd.work_multipliers(r, rng_for(seed, 100 + i)) for i, nd in enumerate(cluster.nodes)]

    # ------------------------------------------------------------------ helpers
    def _answer(self, req: int, node: int, t_decided: float, degraded: bool = False, qos: bool = False) -> None:
        if self.done[req]:
            return
        self.done[req] = True
        self.finished += 1
        if node < 0:
            self.exit0[req] = -1
            self.answered[req] = np.nan
        else:
            self.exit0[req] = node
            if self.skip_heads and node < self.n - 1:  # a deadline or degraded exit runs the skipped head
                t_decided = float(self.c.nodes[node].speed.finish_time(t_decided, self.c.nodes[node].head_s))
            self.answered[req] = t_decided + self.c.return_time(node, t_decided)
        self.degraded[req] = degraded
        self.qos[req] = qos
        w = self.waiters.pop(req, None)
        if w is not None:
            delay = 0.0 if node < 0 else float(self.answered[req] - self.env.now)
            self.env.process(self._notify(w, delay))
        if self.progress is not None and self.finished % self._tick == 0:
            self.progress(self.finished, self.reqs.count)

    def _fallback(self, i: int) -> int:
        """The node that answers for requests stranded before node ``i``: the nearest earlier node that is
        up (all of them computed the request); -1 (lost) when none is."""
        j = i - 1
        while j >= 0 and not any(nd.up for nd in self.reps[j]):
            j -= 1
        return j

    def _pick(self, tier: int, sender: int) -> int | None:
        """The replica of ``tier`` that ``sender`` sends to next: round robin over those that are up."""
        reps = self.reps[tier]
        if len(reps) == 1:
            return 0 if reps[0].up else None
        start = self.rr.get((tier, sender), 0)
        for d in range(len(reps)):
            r = (start + d) % len(reps)
            if reps[r].up:
                self.rr[(tier, sender)] = r + 1
                return r
        return None

    def _enqueue(self, dest: int, r: int, items: list[tuple[int, float, dict[str, np.ndarray]]]) -> None:
        node = self.reps[dest][r]
        node.queue.extend(items)
        if (
            node.wake is not None
            and not node.wake.triggered
            and (not node.wake_full or len(node.queue) >= self.c.nodes[dest].max_batch)
        ):
            node.wake.succeed()

    def _notify(self, ev: simpy.Event, delay: float) -> Any:
        yield self.env.timeout(max(delay, 0.0))
        ev.succeed()

    def _send(self, link: int, items: list[tuple[int, dict[str, np.ndarray]]], nbytes: float, dest: int,
              sender: int, r: int) -> None:  # fmt: skip
        """FIFO link ``link`` (0 = uplink) carries one message to replica ``r`` of node ``dest``."""
        ln = self.c.uplink if link == 0 else self.c.hops[link - 1]
        now = self.env.now
        start = max(now, float(self.link_free[link][r]))
        fin = float(ln.bandwidth.finish_time(start, nbytes))
        self.link_free[link][r] = fin
        self.link_busy[link] += fin - start
        self.env.process(self._deliver(fin + ln.delay_s - now, items, dest, sender, r))

    def _deliver(self, delay: float, items: list[tuple[int, dict[str, np.ndarray]]], dest: int, sender: int,
                 r: int) -> Any:  # fmt: skip
        yield self.env.timeout(delay)
        now = self.env.now
        if not self.reps[dest][r].up:
            r2 = self._pick(dest, sender)
            if r2 is None:
                fallback = self._fallback(dest)
                for req, _ in items:
                    self._answer(req, fallback, now, degraded=True)
                return
            r = r2
        self._enqueue(dest, r, [(req, now, st) for req, st in items])

    # ------------------------------------------------------------------ processes
    def _server(self, i: int, r: int) -> Any:
        env = self.env
        node = self.reps[i][r]
        spec = self.c.nodes[i]
        while True:
            if not node.up:
                assert node.up_event is not None
                yield node.up_event
                continue
            if not node.queue:
                node.wake, node.wake_full = env.event(), False
                yield node.wake
                node.wake = None
                continue
            if spec.max_batch > 1 and spec.max_delay_s > 0 and len(node.queue) < spec.max_batch:
                until = node.queue[0][1] + spec.max_delay_s
                if env.now < until:
                    node.wake, node.wake_full = env.event(), True
                    yield node.wake | env.timeout(until - env.now)
                    node.wake = None
                    continue
            batch = [node.queue.popleft() for _ in range(min(spec.max_batch, len(node.queue)))]
            start = env.now
            work = spec.batch_s(len(batch))
            if self.skip_heads and i < self.n - 1:
                work -= spec.head_s * (work / spec.compute_s)
            mult = self.mult[i]
            if mult is not None:
                work *= float(np.mean([mult[b[0]] for b in batch]))
            dur = float(spec.speed.finish_time(start, work)) - start
            node.in_service = batch
            try:
                yield env.timeout(dur)
            except simpy.Interrupt:
                node.busy += env.now - start
                continue  # the failure handler answered the batch
            node.in_service = []
            node.busy += dur
            node.batches += 1
            node.served += len(batch)
            for _, arrived, _ in batch:
                node.wait += start - arrived
            self._decide(i, batch, r)

    def _decide(self, i: int, batch: list[tuple[int, float, dict[str, np.ndarray]]], r: int = 0) -> None:
        now = self.env.now
        reqs = np.fromiter((b[0] for b in batch), dtype=np.int64, count=len(batch))
        samples = self.reqs.sample[reqs]
        states = [b[2] for b in batch]
        state = {k: np.concatenate([s[k] for s in states], axis=0) for k in states[0]} if states[0] else {}
        remaining = self.reqs.deadline_s[reqs] - (now - self.arrival[reqs])
        last = i == self.n - 1
        cont = np.zeros(reqs.size)
        if not last:  # the wait behind what is queued on the outgoing link counts (the replicas' soonest free)
            up = [r2 for r2, rep in enumerate(self.reps[i + 1]) if rep.up] or list(range(len(self.reps[i + 1])))
            free = min(float(self.link_free[i + 1][r2]) for r2 in up)
            cont[:] = float(self.c.continue_estimate(i, now, free))
        d = self.policy.decide(
            ExitInputs(
                node=i,
                logits=self.trace.logits[samples, i],
                features=self.trace.features[i][samples],
                state=state,
                remaining_s=remaining,
                continue_s=cont,
                labels=self.labels[samples] if self.labels is not None else None,
            )
        )
        ex = np.ones(reqs.size, dtype=bool) if last else np.asarray(d.exit, dtype=bool)
        for j in np.flatnonzero(ex):
            self._answer(int(reqs[j]), i, now, qos=bool(d.qos[j]))
        rest = np.flatnonzero(~ex)
        if rest.size == 0:
            return
        nxt = self._pick(i + 1, r)
        if nxt is None:
            for j in rest:
                self._answer(int(reqs[j]), i, now, degraded=True)
            return
        items = [(int(reqs[j]), {k: np.asarray(v)[j : j + 1] for k, v in d.state.items()}) for j in rest]
        self._send(i + 1, items, float(self.c.cost.hop_bytes[i]) * len(items), i + 1, r, nxt)

    def _failures(self, i: int, r: int) -> Any:
        env = self.env
        spec = self.c.nodes[i]
        node = self.reps[i][r]
        while True:
            yield env.timeout(float(self.fail_rng.exponential(spec.mttf_s)))
            if self.finished >= self.reqs.count:
                return
            node.up = False
            node.up_event = env.event()
            node.down_since = env.now
            dropped = list(node.queue) + list(node.in_service)
            node.queue.clear()
            if node.in_service and node.proc is not None and node.proc.is_alive:
                node.in_service = []
                node.proc.interrupt("node down")
            other = self._pick(i, -2) if dropped else None  # the runtime retries them on another replica
            if other is not None:
                self._enqueue(i, other, dropped)
            else:
                fallback = self._fallback(i)
                for req, _, _ in dropped:
                    self._answer(req, fallback, env.now, degraded=True)
            yield env.timeout(float(self.fail_rng.exponential(spec.mttr_s)))
            node.up = True
            node.down_s += env.now - node.down_since
            node.up_event.succeed()

    def _source(self) -> Any:
        env = self.env
        for req in range(self.reqs.count):
            t = float(self.arrival[req])
            if t > env.now:
                yield env.timeout(t - env.now)
            self._submit(req)

    def _submit(self, req: int) -> None:
        self.arrival[req] = self.env.now
        r = self._pick(0, -1)
        if r is None:
            self._answer(req, -1, self.env.now, degraded=True)
            return
        self._send(0, [(req, {})], float(self.c.cost.input_bytes), 0, -1, r)

    def _client(self) -> Any:
        env = self.env
        while self.next_req < self.reqs.count:
            req = self.next_req
            self.next_req += 1
            ev = env.event()
            self.waiters[req] = ev
            self._submit(req)
            if not ev.triggered:
                yield ev
            if self.think_s > 0:
                yield env.timeout(float(self.think_rng.exponential(self.think_s)))

    def run(self) -> None:
        env = self.env
        for i in range(self.n):
            for r, node in enumerate(self.reps[i]):
                node.proc = env.process(self._server(i, r))
                if self.c.nodes[i].mttf_s > 0:
                    env.process(self._failures(i, r))
        if self.reqs.arrival_s is None:
            for _ in range(self.clients):
                env.process(self._client())
        else:
            env.process(self._source())
        while self.finished < self.reqs.count and env.peek() != float("inf"):
            env.step()
        for node in (nd for reps in self.reps for nd in reps):
            if not node.up:
                node.down_s += env.now - node.down_since


def run_simpy(
    cluster: Cluster,
    trace: Trace,
    policy: ExitPolicy,
    reqs: Requests,
    *,
    seed: int = 0,
    clients: int = 1,
    think_s: float = 0.0,
    scenario: str = "scenario",
    progress: Callable[[int, int], Any] | None = None,
) -> SimResult:
    t_wall = time.perf_counter()
    sim = _Sim(cluster, trace, policy, reqs, seed, clients, think_s, progress)
    sim.run()
    if progress is not None:
        progress(reqs.count, reqs.count)
    records = build_records(trace, reqs.sample, sim.arrival, reqs.deadline_s, sim.exit0, sim.answered,
                            sim.degraded, sim.qos, cluster.return_mode, sim.skip_heads)  # fmt: skip
    ans = records["answered_s"]
    makespan = float(np.nanmax(ans) - np.nanmin(sim.arrival)) if np.isfinite(ans).any() else 0.0
    n = cluster.num_nodes

    def per_tier(attr: str, reduce: Any = np.sum) -> np.ndarray:
        return np.array([reduce([getattr(nd, attr) for nd in reps]) for reps in sim.reps])

    return SimResult(
        records=records,
        node_busy_s=per_tier("busy", np.mean),  # per replica: utilisation stays a fraction of one device
        node_wait_s=per_tier("wait"),
        node_served=per_tier("served").astype(np.int64),
        node_batches=per_tier("batches").astype(np.int64),
        node_down_s=per_tier("down_s", np.mean),
        link_busy_s=sim.link_busy[:n].copy(),
        makespan_s=makespan,
        last_exit_flops=cluster.cost.last_exit_cost(),
        engine="simpy",
        policy=policy.name,
        scenario=scenario,
        wall_s=time.perf_counter() - t_wall,
        events=sim.env.events_processed,
    )
