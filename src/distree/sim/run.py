"""Running scenarios: engine choice, one run, sweeps over deadline / load / fluctuation intensity."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PolicyError
from ..policies import ExitPolicy, create_policy, list_policies, load_policy
from ..trace import Trace
from .des import run_simpy
from .results import SimResult
from .scenario import Cluster, Scenario, ScenarioError, build_cluster
from .vector import run_vector, unsupported_reason
from .workload import make_requests

log = logging.getLogger(__name__)

SWEEP_VARIABLES = ("deadline_s", "load", "fluctuation", "replicas")


def replica_tier(variable: str) -> int | None:
    """The tier of a ``replicas:K`` sweep variable (1-based); None for other variables."""
    name, sep, k = variable.partition(":")
    if name != "replicas":
        return None
    if not sep or not k.isdigit() or int(k) < 1:
        raise ScenarioError(f"sweep variable {variable!r}: give the tier, e.g. replicas:2=1,2,3 (tier 2's replicas)")
    return int(k)


def resolve_policy(spec: str | Path | ExitPolicy, num_nodes: int) -> ExitPolicy:
    """A policy object from a policy file path or a registered name (default thresholds)."""
    if isinstance(spec, ExitPolicy):
        pol = spec
    else:
        p = Path(spec)
        if p.suffix == ".json" or p.is_file():
            pol = load_policy(p)
        elif str(spec) in list_policies():
            pol = create_policy(str(spec), num_nodes)
        else:
            raise PolicyError(
                f"policy {spec!r} is neither a policy file nor a registered policy ({', '.join(list_policies())})"
            )
    if pol.num_nodes != num_nodes:
        raise PolicyError(f"policy {pol.name} is for {pol.num_nodes} nodes but the trace has {num_nodes} exits")
    return pol


def choose_engine(sc: Scenario, trace: Trace, engine: str | None = None, cluster: Cluster | None = None) -> str:
    """'vector' when the scenario allows it and engine is auto, else 'simpy'; an explicit choice is checked."""
    engine = engine or sc.engine
    cluster = cluster if cluster is not None else build_cluster(sc, trace.cost)
    why = unsupported_reason(cluster, sc.workload.arrival != "closed")
    if engine == "vector" and why is not None:
        raise ScenarioError(f"engine 'vector' cannot simulate {why}; use engine = 'simpy' or 'auto'")
    if engine == "auto":
        return "vector" if why is None else "simpy"
    if engine not in ("simpy", "vector"):
        raise ScenarioError(f"unknown engine {engine!r}; use auto, simpy or vector")
    return engine


def simulate(
    sc: Scenario,
    trace: Trace,
    policy: ExitPolicy | str | Path,
    *,
    engine: str | None = None,
    speed_intensity: float | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> SimResult:
    """Run one scenario with one policy on a trace. The result does not depend on the engine."""
    pol = resolve_policy(policy, trace.num_nodes)
    # a fresh copy per run: stateful policies (e.g. random) start from their seed every time
    pol = copy.deepcopy(pol)
    cluster = build_cluster(sc, trace.cost, speed_intensity=speed_intensity)
    reqs = make_requests(sc.workload, sc.seed, trace.num_samples)
    eng = choose_engine(sc, trace, engine, cluster)
    log.info("simulating %s with %s on the %s engine (%d requests)", sc.name, pol.name, eng, reqs.count)
    if eng == "vector":
        res = run_vector(cluster, trace, pol, reqs, seed=sc.seed, scenario=sc.name, progress=progress)
    else:
        res = run_simpy(cluster, trace, pol, reqs, seed=sc.seed, clients=sc.workload.clients,
                        think_s=sc.workload.think_s, scenario=sc.name, progress=progress)  # fmt: skip
    res.meta["compute_source"] = cluster.compute_source
    res.meta["node_compute_s"] = [nd.compute_s for nd in cluster.nodes]
    return res


def vary(sc: Scenario, variable: str, value: float) -> tuple[Scenario, float | None]:
    """A copy of the scenario with one variable changed; returns (scenario, speed intensity or None)."""
    s = sc.copy()
    if variable == "deadline_s":
        if value <= 0:
            raise ScenarioError("deadline_s values must be > 0")
        s.workload.deadline_s = float(value)
        s.workload.deadline_jitter_s = min(s.workload.deadline_jitter_s, 0.5 * float(value))
        return s, None
    if variable == "load":
        if value <= 0:
            raise ScenarioError("load multipliers must be > 0")
        w = s.workload
        if w.arrival == "closed":
            w.clients = max(1, round(w.clients * value))
        elif w.arrival == "onoff":
            w.rate_on_per_s *= value
        else:
            w.rate_per_s *= value
        return s, None
    if variable == "fluctuation":
        return s, float(value)
    tier = replica_tier(variable)
    if tier is not None:
        if value < 1 or value != int(value):
            raise ScenarioError(f"replica counts must be whole numbers >= 1, got {value:g}")
        s.device_nodes[tier - 1] = {**s.device_nodes.get(tier - 1, {}), "replicas": int(value)}
        return s, None
    raise ScenarioError(f"unknown sweep variable {variable!r}; use one of {SWEEP_VARIABLES} (replicas:K)")


def smallest_meeting(rows: list[dict[str, Any]], p99_s: float, policy: str | None = None) -> dict[str, Any] | None:
    """The sweep row with the smallest value (e.g. replica count) whose p99 latency is <= ``p99_s`` with
    nothing lost; None when no swept value meets it."""
    ok = [
        r for r in rows if (policy is None or r["policy"] == policy) and r["lost"] == 0 and r["latency_p99_s"] <= p99_s
    ]
    return min(ok, key=lambda r: r["value"]) if ok else None


def sweep(
    sc: Scenario,
    trace: Trace,
    policies: list[ExitPolicy],
    variable: str,
    values: list[float],
    *,
    engine: str | None = None,
    on_run: Callable[[dict[str, Any]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Aggregates for every (policy, value) pair; ``value`` and ``variable`` are added to each row."""
    if variable == "fluctuation":
        c = build_cluster(sc, trace.cost)
        if all(nd.speed.is_constant and nd.speed.rate.rates[0] == 1.0 for nd in c.nodes):
            raise ScenarioError(
                "sweeping fluctuation needs a scenario whose devices fluctuate: give [devices] a speed profile "
                '(e.g. speed = {kind = "markov", factors = [1.0, 0.3], mean_holding_s = [2.0, 1.0]}); '
                "intensity x maps each factor f to 1 - x (1 - f)"
            )
    rows: list[dict[str, Any]] = []
    for value in values:
        s, intensity = vary(sc, variable, value)
        for pol in policies:
            res = simulate(s, trace, pol, engine=engine, speed_intensity=intensity)
            row = res.aggregates()
            row["variable"] = variable
            row["value"] = float(value)
            rows.append(row)
            if on_run is not None:
                on_run(row)
    return rows
