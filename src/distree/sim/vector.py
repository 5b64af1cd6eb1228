"""Vectorised tandem-queue engine: whole request streams per node with numpy, no event loop.

For open-loop arrivals, FIFO nodes at batch 1 and no failures, the chain is a series of FIFO
servers whose departures follow Lindley's recursion ``d_k = max(a_k, d_{k-1}) + s_k``. Written as
``d_k = S_k + max_{j<=k}(a_j - S_{j-1})`` with ``S`` the prefix sums of the service times, one
``np.maximum.accumulate`` computes a whole node. Time-varying speeds and bandwidths are handled in
the *work domain*: with ``W(t)`` the cumulative work a device (or link) can do by ``t`` (a monotone
function, :class:`distree.fluctuation.PiecewiseRate`), ``W(d_k) = max(W(a_k), W(d_{k-1})) + w_k``,
the same recursion on transformed times, mapped back with ``W^{-1}``. FIFO order is preserved from
node to node (constant propagation delays), so each node sees its requests in arrival order.

The exit decisions call the very same policy object as the runtime, vectorised over every request
that reaches the node (in chunks to bound memory), with ``remaining_s`` and ``continue_s`` computed
per request at its decision time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..fluctuation import BandwidthTrace, SpeedProfile
from ..policies import ExitInputs, ExitPolicy
from ..trace import Trace
from .results import SimResult, build_records, skips_heads
from .scenario import Cluster
from .workload import Requests, rng_for

log = logging.getLogger(__name__)

CHUNK = 1 << 16
_MBIT = 1e6 / 8.0


def fifo(
    a: np.ndarray, amount: float | np.ndarray, profile: SpeedProfile | BandwidthTrace
) -> tuple[np.ndarray, np.ndarray]:
    """Start and finish times of a FIFO server fed at sorted times ``a``, job k of size ``amount[k]``
    (or one size for all): nominal work seconds for a device, bytes for a link."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return a.copy(), a.copy()
    # work in Mbit for a link, in nominal seconds for a device
    unit = np.asarray(amount, dtype=np.float64)
    if isinstance(profile, BandwidthTrace):
        unit = unit / _MBIT
    if unit.ndim == 0:
        k = np.arange(1, a.size + 1, dtype=np.float64)
        cum = k * float(unit)
    else:
        cum = np.cumsum(unit)
    prev = np.concatenate([[0.0], cum[:-1]])
    if profile.is_constant:
        rate = float(profile.rate.rates[0])
        # d_k = S_k + max_{j<=k}(a_j - S_{j-1}),  S = prefix sums of the service times
        d = cum / rate + np.maximum.accumulate(a - prev / rate)
    else:
        r = profile.rate
        aw = np.asarray(r.work(a), dtype=np.float64)
        dw = cum + np.maximum.accumulate(aw - prev)
        d = np.asarray(r.time_of_work(dw), dtype=np.float64)
    d = np.maximum(d, a)
    start = np.maximum(a, np.concatenate([[-np.inf], d[:-1]]))
    return start, d


def deadline_exits(cluster: Cluster, i: int, fin: np.ndarray, remaining: np.ndarray, going: np.ndarray) -> np.ndarray:
    """Which of the requests ``going`` on from node ``i`` (decided at the sorted times ``fin``) the
    deadline rule stops there: those whose ``remaining`` time is below the continue estimate, the wait
    behind the transfers already queued on the outgoing link included. Sequential: whether a request
    leaves decides the backlog the next one sees."""
    qos = np.zeros(fin.size, dtype=bool)
    todo = np.flatnonzero(going & np.isfinite(remaining))
    if todo.size == 0:
        return qos
    bw, nbytes = cluster.hops[i].bandwidth, float(cluster.cost.hop_bytes[i])
    free = -np.inf
    nxt = cluster.nodes[i + 1]
    if bw.is_constant and nxt.speed.is_constant:  # the same arithmetic in plain floats (the common case)
        xfer = nbytes / (float(bw.rate.rates[0]) * _MBIT)
        rest = float(cluster.continue_estimate(i, 0.0)) - xfer  # delay + next compute + way back
        for k, t, left in zip(
            np.flatnonzero(going).tolist(), fin[going].tolist(), remaining[going].tolist(), strict=True
        ):
            start = t if t > free else free
            if left < start + xfer + rest - t:
                qos[k] = True
            else:
                free = start + xfer
        return qos
    for j in np.flatnonzero(going):
        t = float(fin[j])
        if np.isfinite(remaining[j]) and remaining[j] < cluster.continue_estimate(i, t, max(t, free)):
            qos[j] = True
        else:
            free = float(bw.finish_time(max(t, free), nbytes))
    return qos


def decide_chunked(
    policy: ExitPolicy,
    node: int,
    trace: Trace,
    sample: np.ndarray,
    state: dict[str, np.ndarray],
    remaining: np.ndarray,
    cont: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``policy.decide`` for many requests at one node, in chunks. Returns (exit, qos, new state)."""
    b = sample.shape[0]
    ex = np.empty(b, dtype=bool)
    qos = np.empty(b, dtype=bool)
    states: list[dict[str, np.ndarray]] = []
    labels = trace.labels if getattr(policy, "needs_labels", False) else None
    for lo in range(0, b, CHUNK):
        hi = min(b, lo + CHUNK)
        s = sample[lo:hi]
        st = {k: v[lo:hi] for k, v in state.items()}
        d = policy.decide(
            ExitInputs(
                node=node,
                logits=trace.logits[s, node],
                features=trace.features[node][s],
                state=st,
                remaining_s=remaining[lo:hi],
                continue_s=cont[lo:hi],
                labels=labels[s] if labels is not None else None,
            )
        )
        ex[lo:hi] = d.exit
        qos[lo:hi] = d.qos
        states.append(d.state)
    new_state: dict[str, np.ndarray] = {}
    if states and states[0]:
        for k in states[0]:
            new_state[k] = np.concatenate([np.asarray(s[k]) for s in states], axis=0)
    return ex, qos, new_state


def unsupported_reason(cluster: Cluster, open_loop: bool) -> str | None:
    """Why the vectorised engine cannot run this scenario (None: it can)."""
    if not open_loop:
        return "closed-loop arrivals"
    for i, nd in enumerate(cluster.nodes):
        if nd.max_batch > 1:
            return f"batching at node {i + 1}"
        if nd.mttf_s > 0:
            return f"failures at node {i + 1}"
        if nd.replicas > 1:
            return f"replicas at node {i + 1}"
    return None


def run_vector(
    cluster: Cluster,
    trace: Trace,
    policy: ExitPolicy,
    reqs: Requests,
    *,
    seed: int = 0,
    scenario: str = "scenario",
    progress: Callable[[int, int], Any] | None = None,
) -> SimResult:
    why = unsupported_reason(cluster, reqs.arrival_s is not None)
    if why is not None:
        raise ValueError(f"the vectorised engine cannot simulate {why}; use engine = 'simpy' (or 'auto')")
    t_wall = time.perf_counter()
    n = cluster.num_nodes
    cost = cluster.cost
    r = reqs.count
    arrival = np.asarray(reqs.arrival_s, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    if not np.all(order == np.arange(r)):
        raise ValueError("open-loop arrival times must be sorted by request id")
    skip_heads = skips_heads(policy)
    exit0 = np.full(r, -1, dtype=np.int64)
    answered = np.full(r, np.nan)
    qos_all = np.zeros(r, dtype=bool)
    node_busy = np.zeros(n)
    node_wait = np.zeros(n)
    node_served = np.zeros(n, dtype=np.int64)
    link_busy = np.zeros(n)

    ls, lf = fifo(arrival, float(cost.input_bytes), cluster.uplink.bandwidth)
    link_busy[0] = float(np.sum(lf - ls))
    a = lf + cluster.uplink.delay_s
    idx = np.arange(r)
    state: dict[str, np.ndarray] = {}
    for i in range(n):
        nd = cluster.nodes[i]
        mult = nd.work_multipliers(r, rng_for(seed, 100 + i))
        work = nd.compute_s - (nd.head_s if skip_heads and i < n - 1 else 0.0)
        start, fin = fifo(a, work if mult is None else work * mult[idx], nd.speed)
        node_busy[i] = float(np.sum(fin - start))
        node_wait[i] = float(np.sum(start - a))
        node_served[i] = idx.size
        remaining = reqs.deadline_s[idx] - (fin - arrival[idx])
        # exits by score first (no deadline); then the deadline rule in arrival order, each request seeing
        # what the ones before it queued on the outgoing link
        no_dl = np.full(idx.size, np.inf)
        ex, qos, state = decide_chunked(policy, i, trace, reqs.sample[idx], state, no_dl, np.zeros(idx.size))
        if i < n - 1:
            qos = deadline_exits(cluster, i, fin, remaining, ~ex)
            ex |= qos
        if i == n - 1:
            ex[:] = True
        done = idx[ex]
        exit0[done] = i
        qos_all[done] = qos[ex]
        t_ans = fin[ex]
        if skip_heads and i < n - 1:  # a deadline exit runs the head it skipped
            t_ans = np.asarray(nd.speed.finish_time(t_ans, nd.head_s), dtype=np.float64)
        answered[done] = t_ans + np.asarray(cluster.return_time(i, t_ans), dtype=np.float64)
        keep = ~ex
        if i < n - 1 and keep.any():
            hop = cluster.hops[i]
            ls, lf = fifo(fin[keep], float(cost.hop_bytes[i]), hop.bandwidth)
            link_busy[i + 1] = float(np.sum(lf - ls))
            a = lf + hop.delay_s
            idx = idx[keep]
            state = {k: v[keep] for k, v in state.items()}
        else:
            break
        if progress is not None:
            progress(i + 1, n)
    if progress is not None:
        progress(n, n)
    records = build_records(
        trace, reqs.sample, arrival, reqs.deadline_s, exit0, answered, np.zeros(r, dtype=bool), qos_all,
        cluster.return_mode, skip_heads,
    )  # fmt: skip
    makespan = float(np.nanmax(answered) - arrival[0]) if r else 0.0
    return SimResult(
        records=records,
        node_busy_s=node_busy,
        node_wait_s=node_wait,
        node_served=node_served,
        node_batches=node_served.copy(),
        node_down_s=np.zeros(n),
        link_busy_s=link_busy,
        makespan_s=makespan,
        last_exit_flops=cost.last_exit_cost(),
        engine="vector",
        policy=policy.name,
        scenario=scenario,
        wall_s=time.perf_counter() - t_wall,
    )
