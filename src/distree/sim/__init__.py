"""Edge-cluster simulator: devices with fluctuating speed, trace-driven links, the runtime's policies.

Two engines give the same per-request results where both apply: a SimPy discrete-event model
(:mod:`.des`: batching, failures, closed-loop clients) and a vectorised tandem-queue recursion
(:mod:`.vector`: open arrivals at batch 1, millions of requests in seconds). ``engine = "auto"``
picks the vectorised one when the scenario allows it. See docs/simulator.md.

May import :mod:`distree.policies`, :mod:`distree.trace` (the format), :mod:`distree.models`
(cost profiles) and :mod:`distree.fluctuation`; never :mod:`distree.training` or torch (device
profiling, :mod:`.profile`, loads a checkpoint only inside ``profile_device``).
"""

from .des import run_simpy
from .results import SimResult, markdown_table, node_table, plot_results, plot_sweep
from .run import SWEEP_VARIABLES, choose_engine, replica_tier, resolve_policy, simulate, smallest_meeting, sweep, vary
from .scenario import (
    Cluster,
    Scenario,
    ScenarioError,
    build_cluster,
    load_device_profile,
    load_scenario,
    parse_scenario,
)
from .vector import run_vector
from .workload import Requests, make_requests

__all__ = [
    "SWEEP_VARIABLES",
    "Cluster",
    "Requests",
    "Scenario",
    "ScenarioError",
    "SimResult",
    "build_cluster",
    "choose_engine",
    "load_device_profile",
    "load_scenario",
    "make_requests",
    "markdown_table",
    "node_table",
    "parse_scenario",
    "plot_results",
    "plot_sweep",
    "resolve_policy",
    "run_simpy",
    "run_vector",
    "replica_tier",
    "simulate",
    "smallest_meeting",
    "sweep",
    "vary",
]
