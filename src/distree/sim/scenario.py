"""Scenario files (TOML): devices, links, workload. Validated with errors that name the key and the fix.

A scenario is independent of the model: :func:`build_cluster` combines it with a trace's cost
profile (FLOPs per segment and head, bytes per hop) into per-node nominal service times. See
docs/simulator.md for the full key reference; a minimal file::

    [workload]
    arrival = "poisson"
    rate_per_s = 40
    requests = 5000
    deadline_s = 0.05

    [devices]
    flops_per_s = 2e9

    [network.hops]
    bandwidth_mbps = 100
    delay_s = 0.001

Nodes and hops are numbered from 1 in files (node 1 receives the input; hop k joins node k and
node k+1), like the runtime's answers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from .._schema import FormatVersion, LocatedError, Schema, WholeInt, read_toml, validate
from ..errors import ProfileError, ScenarioError
from ..fluctuation import (
    BandwidthTrace,
    ConstantBandwidth,
    PiecewiseRate,
    SpeedProfile,
    bandwidth_from_spec,
    speed_profile_from_spec,
)
from ..models.cost import CostProfile
from .profile import PROFILE_FORMAT, load_device_profile

ARRIVALS = ("poisson", "deterministic", "onoff", "closed")
ENGINES = ("auto", "simpy", "vector")
SERVICES = ("deterministic", "exponential", "lognormal")
_FIX = "see docs/simulator.md for the scenario keys"


# ---------------------------------------------------------------------------- tables (the file schema)
def _resolve_spec(spec: Any, info: ValidationInfo) -> Any:
    """Make a speed/bandwidth table's ``path`` relative to the scenario file's folder."""
    if isinstance(spec, dict) and isinstance(spec.get("path"), str):
        base = Path((info.context or {}).get("base", Path.cwd()))
        p = Path(spec["path"])
        spec = {**spec, "path": str(p if p.is_absolute() else base / p)}
    return spec


class Workload(Schema):
    """``[workload]``: the request stream."""

    arrival: Literal["poisson", "deterministic", "onoff", "closed"] = "poisson"
    requests: WholeInt = Field(1000, ge=1)
    rate_per_s: float = Field(10.0, gt=0, description="requests per second")
    deadline_s: float | None = Field(None, gt=0)
    deadline_jitter_s: float = Field(0.0, ge=0)
    samples: Literal["random", "cycle"] = "random"
    rate_on_per_s: float = Field(0.0, ge=0)
    mean_on_s: float = Field(1.0, gt=0)
    mean_off_s: float = Field(1.0, gt=0)
    clients: WholeInt = Field(1, ge=1)
    think_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _jitter(self) -> Workload:
        if self.deadline_s is not None and self.deadline_jitter_s >= self.deadline_s:
            raise LocatedError(
                f"must be smaller than deadline_s ({self.deadline_s}), got {self.deadline_jitter_s}",
                ("deadline_jitter_s",),
            )
        return self

    def check_complete(self) -> None:
        """The keys an arrival process needs must be given (not left at their defaults)."""
        given = self.model_fields_set
        if self.arrival == "onoff":
            for k in ("rate_on_per_s", "mean_on_s", "mean_off_s"):
                if k not in given:
                    raise LocatedError(f"arrival = 'onoff' needs {k}")
            if self.rate_on_per_s <= 0:
                raise LocatedError(f"must be > 0 with arrival = 'onoff', got {self.rate_on_per_s}", ("rate_on_per_s",))
        if self.arrival in ("poisson", "deterministic") and "rate_per_s" not in given:
            raise LocatedError(f"arrival = '{self.arrival}' needs rate_per_s (requests per second)")


class DeviceSpec(Schema):
    """``[devices]`` defaults and ``[[devices.nodes]]`` overrides: one node's compute."""

    flops_per_s: float | None = Field(None, gt=0)
    seconds: float | None = Field(None, gt=0)  # nominal seconds per request at this node (segment + head)
    speed: dict[str, Any] | float | None = None
    max_batch: WholeInt = Field(1, ge=1)
    max_delay_s: float = Field(0.0, ge=0)
    batch_marginal: float = Field(1.0, ge=0)  # extra time per extra batch row, relative to batch 1
    mttf_s: float = Field(0.0, ge=0)  # 0: never fails
    mttr_s: float = Field(1.0, gt=0)
    service: Literal["deterministic", "exponential", "lognormal"] = "deterministic"
    service_cv: float = Field(0.0, ge=0)  # coefficient of variation for lognormal
    replicas: WholeInt = Field(1, ge=1)  # interchangeable devices of this tier (round robin over the up ones)

    @field_validator("speed", mode="before")
    @classmethod
    def _speed(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float | dict):
            raise ValueError(f"must be a factor or a table {{kind = ...}}, got {v!r}")
        v = _resolve_spec(v, info)
        try:
            speed_profile_from_spec(v)
        except (ValueError, OSError) as e:
            raise ValueError(f"is not a valid speed profile: {e}") from None
        return float(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _compute(self) -> DeviceSpec:
        if {"flops_per_s", "seconds"} <= self.model_fields_set:
            raise ValueError("give either flops_per_s or seconds, not both")
        return self

    def check_service(self) -> None:
        if self.service == "lognormal" and self.service_cv <= 0:
            raise LocatedError(
                f"must be > 0 with service = 'lognormal' (e.g. 0.1), got {self.service_cv}", ("service_cv",)
            )


class _DeviceOverride(DeviceSpec):
    node: WholeInt = Field(ge=1, description="node = <1-based node number>")


class _Devices(DeviceSpec):
    profile: str | None = Field(None, description="a device profile from `distree profile-device`")
    use: Literal["auto", "seconds", "flops"] = "auto"
    nodes: list[_DeviceOverride] = Field(default_factory=list)

    def defaults(self) -> DeviceSpec:
        """The [devices] keys that apply to every node."""
        keys = set(DeviceSpec.model_fields)
        return DeviceSpec.model_construct(
            _fields_set=self.model_fields_set & keys, **{k: copy.deepcopy(getattr(self, k)) for k in keys}
        )


class _Link(Schema):
    bandwidth_mbps: float | None = Field(None, gt=0)
    bandwidth: dict[str, Any] | float | None = None
    delay_s: float = Field(0.0, ge=0)

    @field_validator("bandwidth", mode="before")
    @classmethod
    def _bandwidth(cls, v: Any, info: ValidationInfo) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float | dict):
            raise ValueError(f"must be Mbit/s or a table {{kind = ...}}, got {v!r}")
        v = _resolve_spec(v, info)
        try:
            bandwidth_from_spec(v)
        except (ValueError, OSError) as e:
            raise ValueError(f"is not a valid bandwidth: {e}") from None
        return float(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _one_bandwidth(self) -> _Link:
        if self.bandwidth_mbps is not None and self.bandwidth is not None:
            raise ValueError("give either bandwidth_mbps or bandwidth, not both")
        return self

    def overrides(self) -> dict[str, Any]:
        """The keys this table sets, as :class:`LinkSpec` fields."""
        out: dict[str, Any] = {}
        if self.bandwidth_mbps is not None:
            out["bandwidth"] = self.bandwidth_mbps
        if self.bandwidth is not None:
            out["bandwidth"] = self.bandwidth
        if "delay_s" in self.model_fields_set:
            out["delay_s"] = self.delay_s
        return out


class _HopOverride(_Link):
    hop: WholeInt = Field(ge=1, description="hop = <k> (the link between node k and node k+1)")


class _Network(Schema):
    return_: Literal["chain", "direct"] = Field("chain", alias="return")
    uplink: _Link = Field(default_factory=_Link)
    hops: _Link = Field(default_factory=_Link)
    hop: list[_HopOverride] = Field(default_factory=list)


class ScenarioFile(Schema):
    """A scenario file (TOML). See docs/simulator.md for every key."""

    format_version: FormatVersion = 1
    name: str | None = None
    description: str | None = None
    seed: WholeInt = Field(0, ge=0)
    engine: Literal["auto", "simpy", "vector"] = "auto"
    workload: Workload = Field(default_factory=Workload)
    devices: _Devices = Field(default_factory=_Devices)
    network: _Network = Field(default_factory=_Network)

    @model_validator(mode="after")
    def _complete(self) -> ScenarioFile:
        for section, check in (("workload", self.workload.check_complete), ("devices", self.devices.check_service)):
            try:
                check()
            except LocatedError as e:
                raise LocatedError(str(e), (section, *e.loc)) from None
        base = self.devices.defaults()
        for j, over in enumerate(self.devices.nodes):
            try:
                _merge_device(base, _device_overrides(over)).check_service()
            except LocatedError as e:
                raise LocatedError(str(e), ("devices", "nodes", j, *e.loc)) from None
        return self


# ---------------------------------------------------------------------------- data
@dataclass
class LinkSpec:
    bandwidth: dict[str, Any] | float = 1000.0
    delay_s: float = 0.0


@dataclass
class Scenario:
    name: str = "scenario"
    seed: int = 0
    engine: str = "auto"
    workload: Workload = field(default_factory=Workload)
    device_default: DeviceSpec = field(default_factory=DeviceSpec)
    device_nodes: dict[int, dict[str, Any]] = field(default_factory=dict)  # 0-based node -> overrides
    profile: dict[str, Any] | None = None
    profile_use: str = "auto"  # auto | seconds | flops
    uplink: LinkSpec = field(default_factory=LinkSpec)
    hop_default: LinkSpec = field(default_factory=LinkSpec)
    hop_overrides: dict[int, dict[str, Any]] = field(default_factory=dict)  # 0-based hop -> overrides
    return_mode: str = "chain"  # chain | direct
    base_dir: Path = field(default_factory=Path.cwd)
    raw: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> Scenario:
        return copy.deepcopy(self)


def _device_overrides(over: _DeviceOverride) -> dict[str, Any]:
    return {k: getattr(over, k) for k in over.model_fields_set if k != "node"}


def _merge_device(base: DeviceSpec, over: dict[str, Any]) -> DeviceSpec:
    """``base`` with a node's overrides; giving ``seconds`` drops the default ``flops_per_s`` and vice versa."""
    upd = dict(over)
    if "seconds" in upd:
        upd.setdefault("flops_per_s", None)
    if "flops_per_s" in upd:
        upd.setdefault("seconds", None)
    return base.model_copy(update=copy.deepcopy(upd))


def _merge_link(base: LinkSpec, over: dict[str, Any]) -> LinkSpec:
    out = copy.deepcopy(base)
    for k, v in over.items():
        setattr(out, k, copy.deepcopy(v))
    return out


def parse_scenario(data: dict[str, Any], base_dir: str | Path | None = None, *, source: str = "scenario") -> Scenario:
    """Validate a scenario mapping (as read from TOML) into a :class:`Scenario`.

    Paths in it are relative to ``base_dir``; ``source`` names the file in error messages.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    f = validate(ScenarioFile, data, source=source, error=ScenarioError, context={"base": base}, missing_fix=_FIX)
    sc = Scenario(base_dir=base, raw=copy.deepcopy(data))
    sc.name = f.name if f.name is not None else "scenario"
    sc.seed = f.seed
    sc.engine = f.engine
    sc.workload = f.workload
    dv = f.devices
    if dv.profile is not None:
        ppath = Path(dv.profile)
        try:
            sc.profile = load_device_profile(ppath if ppath.is_absolute() else base / ppath)
        except ProfileError as e:
            raise ProfileError(f"{source}: [devices] 'profile' = {dv.profile!r}: {e}") from None
    sc.profile_use = dv.use
    sc.device_default = dv.defaults()
    sc.device_nodes = {over.node - 1: _device_overrides(over) for over in dv.nodes}
    net = f.network
    sc.return_mode = net.return_
    sc.uplink = _merge_link(LinkSpec(), net.uplink.overrides())
    sc.hop_default = _merge_link(LinkSpec(), net.hops.overrides())
    sc.hop_overrides = {h.hop - 1: h.overrides() for h in net.hop}
    return sc


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    data = read_toml(path, error=ScenarioError, what="scenario file", hint="see examples/scenarios/ for templates")
    sc = parse_scenario(data, base_dir=path.parent, source=str(path))
    if "name" not in data:
        sc.name = path.stem
    return sc


# ---------------------------------------------------------------------------- resolved cluster
@dataclass
class NodeModel:
    compute_s: float  # nominal seconds per request (segment + exit head), batch 1
    speed: SpeedProfile
    head_s: float = 0.0  # the exit head's share of compute_s
    max_batch: int = 1
    max_delay_s: float = 0.0
    batch_marginal: float = 1.0
    mttf_s: float = 0.0
    mttr_s: float = 1.0
    service: str = "deterministic"
    service_cv: float = 0.0
    replicas: int = 1  # devices of this tier, each with this model (failures: each on its own)

    def batch_s(self, b: int) -> float:
        return self.compute_s * (1.0 + self.batch_marginal * (b - 1))

    def work_multipliers(self, count: int, rng: np.random.Generator) -> np.ndarray | None:
        """Per-request work relative to nominal (mean 1), indexed by request id; None when deterministic."""
        if self.service == "exponential":
            return rng.exponential(1.0, size=count)
        if self.service == "lognormal":
            s2 = math.log1p(self.service_cv**2)
            return rng.lognormal(-s2 / 2.0, math.sqrt(s2), size=count)
        return None


@dataclass
class LinkModel:
    bandwidth: BandwidthTrace
    delay_s: float

    @property
    def is_constant(self) -> bool:
        return self.bandwidth.is_constant


@dataclass
class Cluster:
    nodes: list[NodeModel]
    uplink: LinkModel  # client <-> node 1
    hops: list[LinkModel]  # node k <-> node k+1
    cost: CostProfile
    return_mode: str = "chain"
    compute_source: str = "flops"
    _typical_return: list[float] | None = field(default=None, repr=False)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    # ------------------------------------------------------------- return path
    def return_time(self, node: int, t: Any) -> Any:
        """Seconds for an answer produced at ``node`` (0-based) at time ``t`` to reach the client.

        ``chain``: back over hops node-1 ... 1 and the uplink (each: transfer of the answer's bytes
        at that moment + the link's delay); ``direct``: over the uplink only. Answers are small, so
        they do not queue behind each other.
        """
        nbytes = float(self.cost.output_bytes)
        links = [self.hops[k] for k in range(node - 1, -1, -1)] if self.return_mode == "chain" else []
        if np.ndim(t) == 0:
            c = float(t)
            for ln in [*links, self.uplink]:
                c = float(ln.bandwidth.finish_time(c, nbytes)) + ln.delay_s
            return c - float(t)
        t0 = np.asarray(t, dtype=np.float64)
        cur = t0.copy()
        for ln in [*links, self.uplink]:
            cur = np.asarray(ln.bandwidth.finish_time(cur, nbytes), dtype=np.float64) + ln.delay_s
        out = cur - t0
        return float(out) if np.ndim(t) == 0 else out

    def continue_estimate(self, node: int, t: Any, link_free: Any = None) -> Any:
        """The node's estimate at ``t`` of the time until the answer if the request continues to node+1
        and exits there: the wait for what is already queued on its outgoing link (the link is busy until
        ``link_free``; None: idle), the hop's transfer (at the link's bandwidth from then on) + delay, the
        next segment and head (at the next device's speed) and the answer's typical way back. Queues
        downstream are not known to the node and not included."""
        hop = self.hops[node]
        nbytes = float(self.cost.hop_bytes[node])
        nxt = self.nodes[node + 1]
        back = self.typical_return_s(node + 1)
        if np.ndim(t) == 0 and np.ndim(link_free) == 0:
            start = float(t) if link_free is None else max(float(t), float(link_free))
            arr1 = hop.bandwidth.finish_time(start, nbytes) + hop.delay_s
            return nxt.speed.finish_time(arr1, nxt.compute_s) + back - float(t)
        t0 = np.asarray(t, dtype=np.float64)
        start_a = t0 if link_free is None else np.maximum(t0, np.asarray(link_free, dtype=np.float64))
        arr = np.asarray(hop.bandwidth.finish_time(start_a, nbytes), dtype=np.float64) + hop.delay_s
        done = np.asarray(nxt.speed.finish_time(arr, nxt.compute_s), dtype=np.float64)
        return done + back - t0

    def typical_return_s(self, node: int) -> float:
        """What a node expects its answer's way back to take: delays plus the answer's bytes at each link's
        mean bandwidth (answers are tiny; a live node learns this as an average, not from the future)."""
        if self._typical_return is None:
            nbytes = float(self.cost.output_bytes)
            per = [self.uplink, *self.hops]
            out = []
            for k in range(self.num_nodes):
                links = per[: k + 1] if self.return_mode == "chain" else [self.uplink]
                out.append(sum(ln.delay_s + nbytes / (max(ln.bandwidth.mean_mbps(), 1e-9) * 1e6 / 8.0) for ln in links))
            self._typical_return = out
        return self._typical_return[node]


def _speed(spec: Any, seed: int) -> SpeedProfile:
    if isinstance(spec, dict) and spec.get("kind") == "markov" and "seed" not in spec:
        spec = {**spec, "seed": seed}
    return speed_profile_from_spec(spec)


def build_cluster(sc: Scenario, cost: CostProfile, *, speed_intensity: float | None = None) -> Cluster:
    """Resolve the scenario for a model with this cost profile: per-node service times, speeds, links."""
    n = cost.num_nodes
    for k in sc.device_nodes:
        if k >= n:
            raise ScenarioError(f"[[devices.nodes]] node = {k + 1}, but the model has only {n} nodes")
    for k in sc.hop_overrides:
        if k >= n - 1:
            raise ScenarioError(f"[[network.hop]] hop = {k + 1}, but a {n}-node chain has only {n - 1} hops")
    per_node_flops = np.asarray(cost.segment_flops, dtype=np.float64) + np.asarray(cost.exit_flops, dtype=np.float64)
    source = "flops"
    prof_seconds: list[float] | None = None
    prof_flops: list[float] | None = None
    prof_marginal: list[float] | None = None
    if sc.profile is not None:
        p = sc.profile
        same_model = list(p["segment_flops"]) == list(cost.segment_flops) and list(p["exit_flops"]) == list(
            cost.exit_flops
        )
        use = sc.profile_use
        if use == "seconds" and not same_model:
            raise ScenarioError(
                f"[devices] use = 'seconds' needs a profile of the same model, but {p['_path']} was measured on a "
                "model with other FLOPs per segment; use = 'flops' (or 'auto') to rescale by FLOP/s"
            )
        if use == "auto":
            use = "seconds" if same_model else "flops"
        if use == "seconds":
            prof_seconds = [float(x) for x in p["node_s"]]
            source = "profile-seconds"
        else:
            fl = [float(x) for x in p["flops_per_s"]]
            # a profile of another model: use its per-node FLOP/s when the node counts match, else their median
            prof_flops = fl if len(fl) == n else [float(np.median(fl))] * n
            source = "profile-flops"
        if "batch_marginal" in p and len(p["batch_marginal"]) == n:
            prof_marginal = [float(x) for x in p["batch_marginal"]]
    nodes: list[NodeModel] = []
    for i in range(n):
        over = sc.device_nodes.get(i, {})
        d = _merge_device(sc.device_default, over) if over else sc.device_default
        if d.seconds is not None:
            comp = d.seconds
        elif d.flops_per_s is not None:
            comp = per_node_flops[i] / d.flops_per_s
        elif prof_seconds is not None:
            comp = prof_seconds[i]
        elif prof_flops is not None:
            comp = per_node_flops[i] / prof_flops[i]
        else:
            raise ScenarioError(
                "[devices] says nothing about compute speed: give flops_per_s, seconds, or a profile "
                '(`distree profile-device --checkpoint C --out P.json`, then profile = "P.json")'
            )
        speed = _speed(d.speed, sc.seed * 1000 + i + 1)
        if speed_intensity is not None:
            speed = scale_intensity(speed, speed_intensity)
        marginal = d.batch_marginal
        if (
            prof_marginal is not None
            and "batch_marginal" not in over
            and sc.raw.get("devices", {}).get("batch_marginal") is None
        ):
            marginal = prof_marginal[i]
        if (
            prof_seconds is not None  # so sc.profile is not None either
            and sc.profile is not None
            and d.seconds is None
            and d.flops_per_s is None
            and "exit_s" in sc.profile
        ):
            head = float(sc.profile["exit_s"][i])
        else:
            head = comp * float(cost.exit_flops[i]) / max(per_node_flops[i], 1.0)
        nodes.append(
            NodeModel(
                comp,
                speed,
                head,
                d.max_batch,
                d.max_delay_s,
                marginal,
                d.mttf_s,
                d.mttr_s,
                d.service,
                d.service_cv,
                d.replicas,
            )  # fmt: skip
        )
    hops: list[LinkModel] = []
    for k in range(n - 1):
        over = sc.hop_overrides.get(k, {})
        ls = _merge_link(sc.hop_default, over) if over else sc.hop_default
        hops.append(LinkModel(bandwidth_from_spec(ls.bandwidth), ls.delay_s))
    up = LinkModel(bandwidth_from_spec(sc.uplink.bandwidth), sc.uplink.delay_s)
    return Cluster(nodes, up, hops, cost, sc.return_mode, source)


def scale_intensity(speed: SpeedProfile, x: float) -> SpeedProfile:
    """Fluctuation intensity ``x``: every speed factor f becomes ``1 - x (1 - f)`` (0: steady, 1: as given),
    floored at 0.01 so that a device never stops for ever."""
    if x < 0:
        raise ScenarioError(f"fluctuation intensity must be >= 0, got {x}")
    r = speed.rate
    rates = np.maximum(1.0 - x * (1.0 - r.rates), 0.01)
    out = SpeedProfile(PiecewiseRate(r.times, rates, r.period), {**speed.spec, "intensity": x})
    out.kind = speed.kind
    return out


def constant_network(cluster: Cluster) -> bool:
    return cluster.uplink.is_constant and all(h.is_constant for h in cluster.hops)


__all__ = [
    "ARRIVALS",
    "Cluster",
    "ConstantBandwidth",
    "DeviceSpec",
    "LinkModel",
    "LinkSpec",
    "NodeModel",
    "PROFILE_FORMAT",
    "Scenario",
    "ScenarioError",
    "Workload",
    "build_cluster",
    "load_device_profile",
    "load_scenario",
    "parse_scenario",
    "scale_intensity",
]
