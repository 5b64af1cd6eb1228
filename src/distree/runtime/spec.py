"""Cluster spec: one TOML file describing every node of a chain, validated with clear errors.

Example (paths are relative to the spec file)::

    checkpoint = "runs/train"          # checkpoint directory (model.safetensors + model.json)
    policy = "runs/policy.json"        # policy file (distree calibrate / ExitPolicy.save)
    model_name = "distree"             # name served over the Open Inference Protocol
    threads = 1                        # torch threads per node process
    return_margin_ms = 5.0             # time reserved per hop for an answer to travel back
    forward_timeout_s = 30.0           # cap on a hop's gRPC timeout when a request has no deadline
    max_message_bytes = 67108864       # gRPC send/receive limit on every server and channel
    max_request_batch = 1024           # largest batch one ModelInfer call may carry
    compute_mode = "auto"              # inline | thread | auto: inline when a batch takes <= inline_compute_ms
    inline_compute_ms = 5.0

    [batching]                         # optional dynamic batching, per node
    max_batch_size = 8
    max_queue_delay_ms = 2.0

    [tls]                              # optional: TLS on every channel (client->node and node->node)
    ca = "certs/ca.pem"
    client_auth = true                 # mutual TLS: callers must present a certificate signed by ca
    client_cert = "certs/client.pem"   # used by `distree infer` and the cluster tools
    client_key = "certs/client.key"

    [[nodes]]
    address = "127.0.0.1:7001"         # where the previous node (or the client) reaches it
    segment = 1                        # 1-based: node K runs segment K and exit K
    listen = "0.0.0.0:7001"            # optional bind address (default: address)
    metrics_port = 9101                # optional Prometheus endpoint (0/absent: off)
    cert = "certs/node1.pem"           # with [tls]: this node's certificate and key
    key = "certs/node1.key"
    speed = { kind = "constant", factor = 0.5 }   # optional emulated speed profile
    nominal_compute_ms = 1.3           # optional: emulate a device whose segment + exit take this long per
                                       # row at speed 1 (e.g. from `distree profile-device`), instead of
                                       # stretching the host's measured compute time
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


class SpecError(ValueError):
    """The cluster spec is missing, malformed or inconsistent; the message names the key and the fix."""


@dataclass(frozen=True)
class TLSSpec:
    ca: Path
    client_auth: bool = True
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None  # override for hostname verification (ssl_target_name_override)


@dataclass(frozen=True)
class NodeSpec:
    segment: int  # 1-based
    address: str
    listen: str
    metrics_port: int = 0
    cert: Path | None = None
    key: Path | None = None
    speed: dict[str, Any] | None = None
    nominal_compute_ms: float | None = None


@dataclass(frozen=True)
class BatchingSpec:
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0


@dataclass(frozen=True)
class ClusterSpec:
    path: Path
    checkpoint: Path
    policy: Path
    nodes: list[NodeSpec]
    model_name: str = "distree"
    threads: int = 1
    return_margin_ms: float = 5.0
    forward_timeout_s: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_request_batch: int = 1024
    compute_mode: str = "auto"
    inline_compute_ms: float = 5.0
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    tls: TLSSpec | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def node(self, k: int) -> NodeSpec:
        """Node ``k`` (1-based)."""
        if not 1 <= k <= self.num_nodes:
            raise SpecError(f"node {k} is not in {self.path}: nodes are numbered 1..{self.num_nodes}")
        return self.nodes[k - 1]

    @property
    def pid_file(self) -> Path:
        return self.path.with_name(self.path.name + ".pids")


_TOP = {
    "checkpoint",
    "policy",
    "nodes",
    "model_name",
    "threads",
    "return_margin_ms",
    "forward_timeout_s",
    "max_message_bytes",
    "max_request_batch",
    "batching",
    "tls",
}
_NODE = {"address", "segment", "listen", "metrics_port", "cert", "key", "speed", "nominal_compute_ms"}
_TLS = {"ca", "client_auth", "client_cert", "client_key", "server_name"}
_BATCH = {"max_batch_size", "max_queue_delay_ms"}


def _unknown(where: str, got: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise SpecError(f"{where}: unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _typed(where: str, d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    if key not in d:
        return default
    v = d[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SpecError(f"{where}: {key!r} must be a {names}, got {v!r}")
    return v


def _path(base: Path, where: str, d: dict[str, Any], key: str, *, required: bool, must_exist: bool) -> Path | None:
    v = _typed(where, d, key, str)
    if v is None:
        if required:
            raise SpecError(f"{where}: missing {key!r}")
        return None
    p = Path(v).expanduser()
    p = p if p.is_absolute() else (base / p)
    if must_exist and not p.exists():
        raise SpecError(f"{where}: {key} = {v!r} does not exist (looked at {p})")
    return p


def check_address(where: str, addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"{where}: address {addr!r} must be 'host:port' with a port in 1..65535")
    return addr


def parse_spec(data: dict[str, Any], path: str | Path = "<memory>", *, check_files: bool = True) -> ClusterSpec:
    """Validate a parsed spec; relative paths are resolved against the spec file's folder."""
    path = Path(path).resolve() if str(path) != "<memory>" else Path.cwd() / "cluster.toml"
    base = path.parent
    where = str(path)
    _unknown(where, data, _TOP)
    ckpt = _path(base, where, data, "checkpoint", required=True, must_exist=check_files)
    policy = _path(base, where, data, "policy", required=True, must_exist=check_files)
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise SpecError(f"{where}: needs at least one [[nodes]] table (address + segment)")
    tls_raw = _typed(where, data, "tls", dict)
    tls = None
    if tls_raw is not None:
        w = f"{where} [tls]"
        _unknown(w, tls_raw, _TLS)
        ca = _path(base, w, tls_raw, "ca", required=True, must_exist=check_files)
        cc = _path(base, w, tls_raw, "client_cert", required=False, must_exist=check_files)
        ck = _path(base, w, tls_raw, "client_key", required=False, must_exist=check_files)
        if (cc is None) != (ck is None):
            raise SpecError(f"{w}: give both client_cert and client_key, or neither")
        tls = TLSSpec(
            ca=ca,  # type: ignore[arg-type]
            client_auth=_typed(w, tls_raw, "client_auth", bool, True),
            client_cert=cc,
            client_key=ck,
            server_name=_typed(w, tls_raw, "server_name", str),
        )
    nodes: list[NodeSpec] = []
    for i, n in enumerate(raw_nodes):
        w = f"{where} [[nodes]] #{i + 1}"
        if not isinstance(n, dict):
            raise SpecError(f"{w}: must be a table")
        _unknown(w, n, _NODE)
        addr = _typed(w, n, "address", str)
        if addr is None:
            raise SpecError(f"{w}: missing 'address' (host:port)")
        check_address(w, addr)
        seg = _typed(w, n, "segment", int, i + 1)
        listen = check_address(w, _typed(w, n, "listen", str, addr))
        mport = _typed(w, n, "metrics_port", int, 0)
        if not 0 <= mport < 65536:
            raise SpecError(f"{w}: metrics_port must be in 0..65535 (0 = off), got {mport}")
        cert = _path(base, w, n, "cert", required=False, must_exist=check_files)
        key = _path(base, w, n, "key", required=False, must_exist=check_files)
        if tls is not None and (cert is None or key is None):
            raise SpecError(f"{w}: [tls] is on, so every node needs 'cert' and 'key' (see `distree certs create`)")
        if tls is None and (cert is not None or key is not None):
            raise SpecError(f"{w}: 'cert'/'key' given but there is no [tls] table with the CA; add [tls] ca = ...")
        speed = n.get("speed")
        if speed is not None:
            speed = _speed(base, w, speed, check_files)
        nominal = _typed(w, n, "nominal_compute_ms", (int, float))
        if nominal is not None and (isinstance(nominal, bool) or not 0 < float(nominal) < 3.6e6):
            raise SpecError(f"{w}: nominal_compute_ms must be a positive number of milliseconds, got {nominal!r}")
        nodes.append(NodeSpec(seg, addr, listen, mport, cert, key, speed, None if nominal is None else float(nominal)))
    segs = sorted(n.segment for n in nodes)
    if segs != list(range(1, len(nodes) + 1)):
        raise SpecError(
            f"{where}: node segments must be 1..{len(nodes)}, each once (node K runs segment K); got {segs}"
        )
    nodes.sort(key=lambda n: n.segment)
    seen: dict[str, int] = {}
    for n in nodes:
        if n.listen in seen:
            raise SpecError(f"{where}: nodes {seen[n.listen]} and {n.segment} both listen on {n.listen}")
        seen[n.listen] = n.segment
    b_raw = _typed(where, data, "batching", dict, {})
    _unknown(f"{where} [batching]", b_raw, _BATCH)
    batching = BatchingSpec(
        max_batch_size=_typed(f"{where} [batching]", b_raw, "max_batch_size", int, 1),
        max_queue_delay_ms=_typed(f"{where} [batching]", b_raw, "max_queue_delay_ms", float, 0.0),
    )
    if batching.max_batch_size < 1 or batching.max_queue_delay_ms < 0:
        raise SpecError(f"{where} [batching]: need max_batch_size >= 1 and max_queue_delay_ms >= 0")
    spec = ClusterSpec(
        path=path,
        checkpoint=ckpt,  # type: ignore[arg-type]
        policy=policy,  # type: ignore[arg-type]
        nodes=nodes,
        model_name=_typed(where, data, "model_name", str, "distree"),
        threads=_typed(where, data, "threads", int, 1),
        return_margin_ms=_typed(where, data, "return_margin_ms", float, 5.0),
        forward_timeout_s=_typed(where, data, "forward_timeout_s", float, 30.0),
        max_message_bytes=_typed(where, data, "max_message_bytes", int, DEFAULT_MAX_MESSAGE),
        max_request_batch=_typed(where, data, "max_request_batch", int, 1024),
        compute_mode=_typed(where, data, "compute_mode", str, "auto"),
        inline_compute_ms=_typed(where, data, "inline_compute_ms", float, 5.0),
        batching=batching,
        tls=tls,
    )
    if spec.threads < 1:
        raise SpecError(f"{where}: threads must be >= 1, got {spec.threads}")
    if spec.return_margin_ms < 0 or spec.forward_timeout_s <= 0:
        raise SpecError(f"{where}: need return_margin_ms >= 0 and forward_timeout_s > 0")
    if spec.max_message_bytes < 1024 or spec.max_request_batch < 1:
        raise SpecError(f"{where}: need max_message_bytes >= 1024 and max_request_batch >= 1")
    if spec.compute_mode not in ("auto", "inline", "thread"):
        raise SpecError(f"{where}: compute_mode must be 'auto', 'inline' or 'thread', got {spec.compute_mode!r}")
    if not spec.model_name or "/" in spec.model_name:
        raise SpecError(f"{where}: model_name must be a non-empty name without '/', got {spec.model_name!r}")
    return spec


def _speed(base: Path, where: str, speed: Any, check_files: bool) -> dict[str, Any]:
    from ..fluctuation import speed_profile_from_spec

    if isinstance(speed, int | float) and not isinstance(speed, bool):
        speed = {"kind": "constant", "factor": float(speed)}
    if not isinstance(speed, dict):
        raise SpecError(f'{where}: speed must be a table like {{ kind = "constant", factor = 0.5 }}')
    speed = dict(speed)
    if speed.get("kind") == "trace" and isinstance(speed.get("path"), str):
        p = Path(speed["path"]).expanduser()
        speed["path"] = str(p if p.is_absolute() else base / p)
    if check_files:
        try:
            speed_profile_from_spec(speed)
        except (ValueError, OSError) as e:
            raise SpecError(f"{where}: bad speed profile: {e}") from e
    return speed


def load_spec(path: str | Path, *, check_files: bool = True) -> ClusterSpec:
    """Read and validate a cluster spec (TOML)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"no cluster spec at {p}; write one (see docs/runtime.md) or pass --spec")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{p} is not valid TOML: {e}") from e
    return parse_spec(data, p, check_files=check_files)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def spec_toml(
    checkpoint: str | Path,
    policy: str | Path,
    nodes: list[dict[str, Any]],
    *,
    batching: dict[str, Any] | None = None,
    tls: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    """TOML text of a cluster spec (the inverse of :func:`parse_spec`, for tools and tests)."""
    lines = [f"checkpoint = {_toml_value(checkpoint)}", f"policy = {_toml_value(policy)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in options.items()]
    for name, table in (("batching", batching), ("tls", tls)):
        if table:
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for n in nodes:
        lines += ["", "[[nodes]]"] + [f"{k} = {_toml_value(v)}" for k, v in n.items()]
    return "\n".join(lines) + "\n"
