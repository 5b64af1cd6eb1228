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
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fluctuation import (
    BandwidthTrace,
    ConstantBandwidth,
    PiecewiseRate,
    SpeedProfile,
    bandwidth_from_spec,
    speed_profile_from_spec,
)
from ..models.cost import CostProfile

PROFILE_FORMAT = "distree-device-profile/1"
ARRIVALS = ("poisson", "deterministic", "onoff", "closed")
ENGINES = ("auto", "simpy", "vector")


class ScenarioError(ValueError):
    """A scenario file or device profile is missing or invalid."""


# ---------------------------------------------------------------------------- key sets
_TOP = {"name", "seed", "engine", "workload", "devices", "network", "description"}
_WORKLOAD = {
    "arrival", "rate_per_s", "requests", "deadline_s", "deadline_jitter_s", "samples",
    "rate_on_per_s", "mean_on_s", "mean_off_s", "clients", "think_s",
}  # fmt: skip
_DEVICE = {
    "flops_per_s", "seconds", "speed", "max_batch", "max_delay_s", "batch_marginal", "mttf_s", "mttr_s",
    "service", "service_cv",
}  # fmt: skip
SERVICES = ("deterministic", "exponential", "lognormal")
_DEVICES = _DEVICE | {"profile", "use", "nodes"}
_LINK = {"bandwidth_mbps", "bandwidth", "delay_s"}
_NETWORK = {"return", "uplink", "hops", "hop"}


def _check_keys(d: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ScenarioError(f"[{where}] must be a table, got {type(d).__name__}")
    extra = set(d) - allowed
    if extra:
        raise ScenarioError(f"[{where}]: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
    return d


def _num(d: dict[str, Any], key: str, where: str, default: Any = None, *, lo: float | None = 0.0,
         strict: bool = False, integer: bool = False) -> Any:  # fmt: skip
    if key not in d:
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ScenarioError(f"[{where}] {key} must be a number, got {v!r}")
    if integer and (not float(v).is_integer()):
        raise ScenarioError(f"[{where}] {key} must be a whole number, got {v!r}")
    if not math.isfinite(float(v)):
        raise ScenarioError(f"[{where}] {key} must be finite, got {v!r}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ScenarioError(f"[{where}] {key} must be {'>' if strict else '>='} {lo}, got {v!r}")
    return int(v) if integer else float(v)


# ---------------------------------------------------------------------------- data
@dataclass
class Workload:
    arrival: str = "poisson"
    requests: int = 1000
    rate_per_s: float = 10.0
    deadline_s: float | None = None
    deadline_jitter_s: float = 0.0
    samples: str = "random"  # random | cycle
    rate_on_per_s: float = 0.0
    mean_on_s: float = 1.0
    mean_off_s: float = 1.0
    clients: int = 1
    think_s: float = 0.0


@dataclass
class DeviceSpec:
    flops_per_s: float | None = None
    seconds: float | None = None  # nominal seconds per request at this node (segment + head)
    speed: dict[str, Any] | float | None = None
    max_batch: int = 1
    max_delay_s: float = 0.0
    batch_marginal: float = 1.0  # extra time per extra batch row, relative to batch 1
    mttf_s: float = 0.0  # 0: never fails
    mttr_s: float = 1.0
    service: str = "deterministic"  # per-request work: fixed, or random with mean 1 x nominal
    service_cv: float = 0.0  # coefficient of variation for lognormal


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


def _device_spec(d: dict[str, Any], where: str, base: DeviceSpec | None = None) -> DeviceSpec:
    out = copy.deepcopy(base) if base is not None else DeviceSpec()
    if "flops_per_s" in d:
        out.flops_per_s = _num(d, "flops_per_s", where, lo=0.0, strict=True)
        out.seconds = None
    if "seconds" in d:
        out.seconds = _num(d, "seconds", where, lo=0.0, strict=True)
        out.flops_per_s = None
    if "speed" in d:
        sp = d["speed"]
        if isinstance(sp, bool) or not isinstance(sp, int | float | dict):
            raise ScenarioError(f"[{where}] speed must be a factor or a table {{kind = ...}}, got {sp!r}")
        out.speed = sp
    out.max_batch = _num(d, "max_batch", where, out.max_batch, lo=1, integer=True)
    out.max_delay_s = _num(d, "max_delay_s", where, out.max_delay_s)
    out.batch_marginal = _num(d, "batch_marginal", where, out.batch_marginal)
    out.mttf_s = _num(d, "mttf_s", where, out.mttf_s)
    out.mttr_s = _num(d, "mttr_s", where, out.mttr_s, lo=0.0, strict=True)
    if "service" in d:
        out.service = str(d["service"])
        if out.service not in SERVICES:
            raise ScenarioError(f"[{where}] service must be one of {SERVICES}, got {out.service!r}")
    out.service_cv = _num(d, "service_cv", where, out.service_cv)
    if out.service == "lognormal" and out.service_cv <= 0:
        raise ScenarioError(f"[{where}] service = 'lognormal' needs service_cv > 0 (e.g. 0.1)")
    return out


def _link_spec(d: dict[str, Any], where: str, base: LinkSpec | None = None) -> LinkSpec:
    out = copy.deepcopy(base) if base is not None else LinkSpec()
    if "bandwidth_mbps" in d and "bandwidth" in d:
        raise ScenarioError(f"[{where}] give either bandwidth_mbps or bandwidth, not both")
    if "bandwidth_mbps" in d:
        out.bandwidth = _num(d, "bandwidth_mbps", where, lo=0.0, strict=True)
    if "bandwidth" in d:
        bw = d["bandwidth"]
        if isinstance(bw, bool) or not isinstance(bw, int | float | dict):
            raise ScenarioError(f"[{where}] bandwidth must be Mbit/s or a table {{kind = ...}}, got {bw!r}")
        out.bandwidth = bw
    out.delay_s = _num(d, "delay_s", where, out.delay_s)
    return out


def _resolve_paths(spec: Any, base: Path) -> Any:
    """Make a spec's ``path`` relative to the scenario file's folder."""
    if isinstance(spec, dict) and "path" in spec:
        p = Path(spec["path"])
        spec = {**spec, "path": str(p if p.is_absolute() else base / p)}
    return spec


def _overrides(
    items: Any, table: str, index_key: str, index_help: str, keys: set[str], validate: Any, path_key: str, base: Path
) -> dict[int, dict[str, Any]]:
    """Per-node / per-hop override tables (``[[devices.nodes]]``, ``[[network.hop]]``), validated, by 0-based index."""
    section, name = table.split(".")
    if not isinstance(items, list):
        raise ScenarioError(f"[{section}] {name} must be an array of tables ([[{table}]])")
    out: dict[int, dict[str, Any]] = {}
    for j, item in enumerate(items):
        where = f"{table} #{j + 1}"
        _check_keys(item, keys | {index_key}, where)
        if index_key not in item:
            raise ScenarioError(f"[{where}] needs {index_key} = {index_help}")
        k = _num(item, index_key, where, lo=1, integer=True) - 1
        over = {kk: vv for kk, vv in item.items() if kk != index_key}
        validate(over, where)  # validate now
        if path_key in over:
            over[path_key] = _resolve_paths(over[path_key], base)
        out[k] = over
    return out


def parse_scenario(data: dict[str, Any], base_dir: str | Path | None = None) -> Scenario:
    """Validate a scenario mapping (as read from TOML) into a :class:`Scenario`."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    _check_keys(data, _TOP, "scenario")
    sc = Scenario(base_dir=base, raw=copy.deepcopy(data))
    sc.name = str(data.get("name", "scenario"))
    sc.seed = _num(data, "seed", "scenario", 0, integer=True)
    sc.engine = str(data.get("engine", "auto"))
    if sc.engine not in ENGINES:
        raise ScenarioError(f"engine must be one of {ENGINES}, got {sc.engine!r}")

    w = _check_keys(data.get("workload", {}), _WORKLOAD, "workload")
    wl = Workload()
    wl.arrival = str(w.get("arrival", "poisson"))
    if wl.arrival not in ARRIVALS:
        raise ScenarioError(f"[workload] arrival must be one of {ARRIVALS}, got {wl.arrival!r}")
    wl.requests = _num(w, "requests", "workload", wl.requests, lo=1, integer=True)
    wl.rate_per_s = _num(w, "rate_per_s", "workload", wl.rate_per_s, lo=0.0, strict=True)
    wl.deadline_s = _num(w, "deadline_s", "workload", None, lo=0.0, strict=True)
    wl.deadline_jitter_s = _num(w, "deadline_jitter_s", "workload", 0.0)
    if wl.deadline_s is not None and wl.deadline_jitter_s >= wl.deadline_s:
        raise ScenarioError("[workload] deadline_jitter_s must be smaller than deadline_s")
    wl.samples = str(w.get("samples", "random"))
    if wl.samples not in ("random", "cycle"):
        raise ScenarioError(f"[workload] samples must be 'random' or 'cycle', got {wl.samples!r}")
    if wl.arrival == "onoff":
        for k in ("rate_on_per_s", "mean_on_s", "mean_off_s"):
            if k not in w:
                raise ScenarioError(f"[workload] arrival = 'onoff' needs {k}")
        wl.rate_on_per_s = _num(w, "rate_on_per_s", "workload", lo=0.0, strict=True)
        wl.mean_on_s = _num(w, "mean_on_s", "workload", lo=0.0, strict=True)
        wl.mean_off_s = _num(w, "mean_off_s", "workload", lo=0.0, strict=True)
    if wl.arrival == "closed":
        wl.clients = _num(w, "clients", "workload", 1, lo=1, integer=True)
        wl.think_s = _num(w, "think_s", "workload", 0.0)
    if wl.arrival in ("poisson", "deterministic") and "rate_per_s" not in w:
        raise ScenarioError(f"[workload] arrival = '{wl.arrival}' needs rate_per_s (requests per second)")
    sc.workload = wl

    dv = _check_keys(data.get("devices", {}), _DEVICES, "devices")
    if "profile" in dv:
        ppath = Path(dv["profile"])
        sc.profile = load_device_profile(ppath if ppath.is_absolute() else base / ppath)
    sc.profile_use = str(dv.get("use", "auto"))
    if sc.profile_use not in ("auto", "seconds", "flops"):
        raise ScenarioError(f"[devices] use must be 'auto', 'seconds' or 'flops', got {sc.profile_use!r}")
    sc.device_default = _device_spec({k: v for k, v in dv.items() if k in _DEVICE}, "devices")
    sc.device_default.speed = _resolve_paths(sc.device_default.speed, base)
    sc.device_nodes.update(
        _overrides(dv.get("nodes", []), "devices.nodes", "node", "<1-based node number>", _DEVICE, _device_spec,
                   "speed", base)
    )  # fmt: skip

    net = _check_keys(data.get("network", {}), _NETWORK, "network")
    sc.return_mode = str(net.get("return", "chain"))
    if sc.return_mode not in ("chain", "direct"):
        raise ScenarioError(f"[network] return must be 'chain' (back along the chain) or 'direct', got "
                            f"{sc.return_mode!r}")  # fmt: skip
    sc.uplink = _link_spec(_check_keys(net.get("uplink", {}), _LINK, "network.uplink"), "network.uplink")
    sc.uplink.bandwidth = _resolve_paths(sc.uplink.bandwidth, base)
    sc.hop_default = _link_spec(_check_keys(net.get("hops", {}), _LINK, "network.hops"), "network.hops")
    sc.hop_default.bandwidth = _resolve_paths(sc.hop_default.bandwidth, base)
    sc.hop_overrides.update(
        _overrides(net.get("hop", []), "network.hop", "hop", "<k> (the link between node k and node k+1)", _LINK,
                   _link_spec, "bandwidth", base)
    )  # fmt: skip
    # fail early on unreadable speed/bandwidth files
    for spec in [sc.device_default.speed, *[o.get("speed") for o in sc.device_nodes.values()]]:
        if isinstance(spec, dict):
            try:
                speed_profile_from_spec(spec)
            except ValueError as e:
                raise ScenarioError(f"[devices] speed: {e}") from e
    for spec in [sc.uplink.bandwidth, sc.hop_default.bandwidth, *[o.get("bandwidth") for o in
                                                                    sc.hop_overrides.values()]]:  # fmt: skip
        if spec is not None:
            try:
                bandwidth_from_spec(spec)
            except ValueError as e:
                raise ScenarioError(f"[network] bandwidth: {e}") from e
    return sc


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"no scenario file at {path}; see examples/scenarios/ for templates")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario {path} is not valid TOML: {e}") from e
    sc = parse_scenario(data, base_dir=path.parent)
    if "name" not in data:
        sc.name = path.stem
    return sc


# ---------------------------------------------------------------------------- device profiles
def load_device_profile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"no device profile at {path}; create one with `distree profile-device`")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ScenarioError(f"device profile {path} is not valid JSON: {e}") from e
    if d.get("format") != PROFILE_FORMAT:
        raise ScenarioError(f"{path} is not a device profile (format {d.get('format')!r}, want {PROFILE_FORMAT!r})")
    for k in ("node_s", "flops_per_s", "segment_flops", "exit_flops"):
        if k not in d:
            raise ScenarioError(f"device profile {path} lacks {k!r}; re-create it with `distree profile-device`")
    d["_path"] = str(path)
    return d


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
                c = ln.bandwidth.finish_time(c, nbytes) + ln.delay_s
            return c - float(t)
        t0 = np.asarray(t, dtype=np.float64)
        cur = t0.copy()
        for ln in [*links, self.uplink]:
            cur = np.asarray(ln.bandwidth.finish_time(cur, nbytes), dtype=np.float64) + ln.delay_s
        out = cur - t0
        return float(out) if np.ndim(t) == 0 else out

    def continue_estimate(self, node: int, t: Any) -> Any:
        """The node's estimate at ``t`` of the time until the answer if the request continues to node+1
        and exits there: the hop's transfer (at the link's bandwidth from ``t`` on) + delay, the next segment
        and head (at the next device's speed) and the answer's typical way back. Queues downstream are not
        known to the node and not included."""
        hop = self.hops[node]
        nbytes = float(self.cost.hop_bytes[node])
        nxt = self.nodes[node + 1]
        back = self.typical_return_s(node + 1)
        if np.ndim(t) == 0:
            arr1 = hop.bandwidth.finish_time(float(t), nbytes) + hop.delay_s
            return nxt.speed.finish_time(arr1, nxt.compute_s) + back - float(t)
        t0 = np.asarray(t, dtype=np.float64)
        arr = np.asarray(hop.bandwidth.finish_time(t0, nbytes), dtype=np.float64) + hop.delay_s
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
        d = _device_spec(over, f"devices.nodes #{i + 1}", sc.device_default) if over else sc.device_default
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
        if prof_seconds is not None and d.seconds is None and d.flops_per_s is None and "exit_s" in sc.profile:
            head = float(sc.profile["exit_s"][i])
        else:
            head = comp * float(cost.exit_flops[i]) / max(per_node_flops[i], 1.0)
        nodes.append(
            NodeModel(
                comp, speed, head, d.max_batch, d.max_delay_s, marginal, d.mttf_s, d.mttr_s, d.service, d.service_cv
            )  # fmt: skip
        )
    hops: list[LinkModel] = []
    for k in range(n - 1):
        over = sc.hop_overrides.get(k, {})
        ls = _link_spec(over, f"network.hop #{k + 1}", sc.hop_default) if over else sc.hop_default
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
