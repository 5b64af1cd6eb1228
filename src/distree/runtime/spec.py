"""Cluster spec: one TOML file describing every node of a chain, validated with clear errors.

Example (paths are relative to the spec file)::

    checkpoint = "runs/train"          # checkpoint directory (model.safetensors + model.json)
    policy = "runs/policy.json"        # policy file (distree calibrate / ExitPolicy.save)
    model_name = "distree"             # name served over the Open Inference Protocol
    threads = 1                        # torch threads per node process
    return_margin_ms = 5.0             # time reserved per hop for an answer to travel back
    forward_timeout_s = 30.0           # cap on a hop's timeout when a request has no deadline
    hop_timeout_factor = 4.0           # a hop may take this x the p99 of its last 256 round trips ...
    hop_timeout_margin_ms = 200.0      # ... + this per hop still ahead, before its successor is suspect (0: off)
    max_message_bytes = 16777216       # optional gRPC message limit; absent: derived from the model's input size
                                       # and max_request_batch (with headroom), at most 64 MiB
    max_request_batch = 1024           # largest batch one ModelInfer call may carry
    compute_mode = "auto"              # inline | thread | auto: inline when a batch takes <= inline_compute_ms
    inline_compute_ms = 5.0
    max_inflight_bytes = 67108864      # optional: request bytes a node handles at once (default: 4 message limits)
    max_concurrent_rpcs = 1024         # calls a node serves at once (more: RESOURCE_EXHAUSTED)
    max_concurrent_streams = 1024      # calls per HTTP/2 connection (more are refused: UNAVAILABLE, retried)
    http_port = 8000                   # optional: the Open Inference Protocol over HTTP/REST on node 1 (0/absent: off)

    [batching]                         # optional dynamic batching, per node
    max_batch_size = 8
    max_queue_delay_ms = 2.0

    [tls]                              # optional: TLS on every channel (client->node and node->node)
    ca = "certs/ca.pem"
    client_auth = true                 # mutual TLS: callers must present a certificate signed by ca
    client_cert = "certs/client.pem"   # used by `distree infer` and the cluster tools
    client_key = "certs/client.key"
    metrics = true                     # /metrics over HTTPS with the node's certificate (default with [tls])

    [access]                           # optional: who may call what (docs/security.md)
    forward = ["predecessor"]          # with mutual TLS: the identities admitted to Forward (node K-1 on K)
    info = ["predecessor", "operator"]
    inference = ["client", "operator"] # ... and to the Open Inference Protocol on node 1
    token_file = "secrets/chain.token" # without mutual TLS: the shared secret of Forward/Info (mode 600)
    client_tokens_file = "secrets/clients.tokens"   # bearer tokens accepted for inference, one per line
    allow_unauthenticated = false      # needed (or TLS, or a token) when nodes listen beyond loopback

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
    backend = "onnx"                   # optional, per node: torch | onnx | onnx-int8 (default: the top-level
    onnx_dir = "runs/wrn-onnx"         # `backend`, "torch"); the export folder of `distree export --format onnx`
    providers = ["CUDA", "CPU"]        # ONNX Runtime execution providers in preference order (CPU always last)

    [[nodes]]                          # a second table with the same segment: a replica of that tier
    address = "127.0.0.1:7011"
    segment = 1

The top level takes the same three keys as defaults for every node. A chain may mix backends (a torch
node next to an int8 ONNX node). ``checkpoint`` may be left out when every node runs ONNX: an ONNX
node reads the classes, shapes and normalisation from the export's manifest and never imports torch.

Replicas: several ``[[nodes]]`` with one segment are interchangeable replicas of that tier (replica
1, 2, ... in file order). Node K reaches tier K+1 through one gRPC channel over all its replicas'
addresses; clients take every address of tier 1. Replicas of a tier may run different backends.

This module owns the whole spec (:class:`ClusterSpec`: the top-level keys and the checks across
tables) and reading it (:func:`parse_spec`, :func:`load_spec`); the tables' own fields and checks are
in :mod:`.spec_tables`, writing a spec (:func:`~.spec_toml.spec_toml`) in :mod:`.spec_toml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from .._schema import FormatVersion, FrozenSchema, LocatedError, read_toml, validate
from ..errors import SpecError
from .spec_tables import AccessSpec, Backend, BatchingSpec, NodeSpec, TLSSpec, resolve_path

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
MAX_GRPC_MESSAGE = 2**31 - 1  # gRPC's message limits are C ints
_FIX = "see docs/runtime.md for the cluster spec keys"


class ClusterSpec(FrozenSchema):
    """A validated cluster spec. ``path`` is the spec file; paths in it are resolved against its folder."""

    format_version: FormatVersion = 1
    checkpoint: Path | None = Field(None, description="the checkpoint directory written by `distree train`")
    policy: Path = Field(description="the policy file written by `distree calibrate`")
    tls: TLSSpec | None = None  # before nodes: the nodes' validator checks their certificates against it
    nodes: list[NodeSpec] = Field(min_length=1, description="one [[nodes]] table per node (address + segment)")
    model_name: str = "distree"
    threads: int = Field(1, ge=1)
    return_margin_ms: float = Field(5.0, ge=0)
    forward_timeout_s: float = Field(30.0, gt=0)
    hop_timeout_factor: float = Field(4.0, ge=0)  # 0: no hop timeout, only deadlines and forward_timeout_s
    hop_timeout_margin_ms: float = Field(200.0, ge=0)
    # absent: each node derives its limit from the model (see .limits); the field's value is then the
    # channels' send limit
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE, ge=1024, le=MAX_GRPC_MESSAGE)
    max_request_batch: int = Field(1024, ge=1)
    max_inflight_bytes: int | None = Field(None, ge=1024, le=2**62)  # absent: 4 message limits
    max_concurrent_rpcs: int = Field(1024, ge=1, le=MAX_GRPC_MESSAGE)
    max_concurrent_streams: int = Field(1024, ge=1, le=MAX_GRPC_MESSAGE)
    compute_mode: Literal["auto", "inline", "thread"] = "auto"
    inline_compute_ms: float = Field(5.0, ge=0)
    http_port: int = Field(0, ge=0, le=65535)  # node 1's HTTP/REST endpoint, on node 1's listen host; 0: off
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    access: AccessSpec = Field(default_factory=AccessSpec)
    backend: Backend = "torch"
    onnx_dir: Path | None = None
    providers: list[str] = Field(default_factory=lambda: ["CPU"], min_length=1)
    _path: Path = PrivateAttr(default_factory=lambda: Path.cwd() / "cluster.toml")

    resolve_paths = field_validator("checkpoint", "policy", "onnx_dir", mode="before")(resolve_path)

    @model_validator(mode="after")
    def _protected(self) -> ClusterSpec:
        """Internal RPCs reachable from other hosts need mutual TLS or a token (or an explicit opt-out)."""
        a = self.access
        mtls = self.tls is not None and self.tls.client_auth
        if mtls or a.token_file is not None or a.allow_unauthenticated:
            return self
        exposed = [n.listen for n in self.nodes if n.listen.rsplit(":", 1)[0] not in _LOOPBACK]
        if exposed:
            raise LocatedError(
                f"nodes listen on {', '.join(exposed)} but Forward/Info have no protection: add [tls] with "
                'client_auth = true (mutual TLS), or [access] token_file = "chain.token" (a shared secret, '
                "mode 600), or [access] allow_unauthenticated = true on a network you trust",
                ("access",),
            )
        return self

    @model_validator(mode="after")
    def _inflight(self) -> ClusterSpec:
        """A node must be able to hold at least one message of the largest size."""
        cap = self.max_inflight_bytes
        if cap is not None and "max_message_bytes" in self.model_fields_set and cap < self.max_message_bytes:
            raise LocatedError(
                f"= {cap} is below max_message_bytes = {self.max_message_bytes}: a request of the largest size "
                "would always be refused; raise max_inflight_bytes or lower max_message_bytes",
                ("max_inflight_bytes",),
            )
        return self

    @model_validator(mode="after")
    def _backends(self) -> ClusterSpec:
        """Every torch node needs the checkpoint; every ONNX node an export folder."""
        for i, n in enumerate(self.nodes):
            kind = n.backend or self.backend
            if kind == "torch" and self.checkpoint is None:
                raise ValueError(
                    f"node {n.segment} runs the torch backend, so the spec needs 'checkpoint' (the folder "
                    'written by `distree train`); or give it backend = "onnx" and an onnx_dir'
                )
            if kind != "torch" and (n.onnx_dir or self.onnx_dir) is None:
                raise LocatedError(
                    f"is {kind} but no 'onnx_dir' is set (for the node or the spec); export one with "
                    "`distree export --checkpoint C --format onnx --out DIR`",
                    ("nodes", i, "backend"),
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _segment_default(cls, data: Any) -> Any:
        """A node without ``segment`` runs the segment of its position in the list."""
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            nodes = [
                {**n, "segment": i + 1} if isinstance(n, dict) and "segment" not in n else n
                for i, n in enumerate(data["nodes"])
            ]
            data = {**data, "nodes": nodes}
        return data

    @field_validator("hop_timeout_factor")
    @classmethod
    def _hop_factor(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError(
                f"must be 0 (no hop timeout) or at least 1 (a hop may take that many times its p99 round trip), got {v}"
            )
        return v

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError(f"must be a non-empty name without '/', got {v!r}")
        return v

    @field_validator("nodes")
    @classmethod
    def _consistent(cls, nodes: list[NodeSpec], info: ValidationInfo) -> list[NodeSpec]:
        """Segments 1..N (several nodes of a segment are its replicas), certificates exactly when [tls] is
        on, no two nodes on one address or port; sorted by segment (replicas in file order)."""
        segs = sorted(n.segment for n in nodes)
        tiers = sorted(set(segs))
        if tiers != list(range(1, len(tiers) + 1)):
            raise ValueError(
                f"must have segments 1..{len(tiers)}, each at least once (node K runs segment K; several nodes "
                f"of one segment are its replicas); got {segs}"
            )
        tls_on = info.data.get("tls") is not None
        for i, n in enumerate(nodes):
            if tls_on and (n.cert is None or n.key is None):
                raise LocatedError(
                    "[tls] is on, so every node needs 'cert' and 'key' (see `distree certs create`)", (i,)
                )
            if not tls_on and (n.cert is not None or n.key is not None):
                raise LocatedError(
                    "'cert'/'key' given but there is no [tls] table with the CA; add [tls] ca = ...", (i,)
                )
        nodes = sorted(nodes, key=lambda n: n.segment)
        for key, must, both in (("listen", "listen on", "listen on"), ("address", "have", "have the address")):
            seen: dict[str, int] = {}
            for n in nodes:
                v = getattr(n, key)
                if v in seen:
                    raise ValueError(f"must {must} distinct addresses: nodes {seen[v]} and {n.segment} both {both} {v}")
                seen[v] = n.segment
        return nodes

    @property
    def path(self) -> Path:
        return self._path

    @property
    def num_nodes(self) -> int:
        """Tiers of the chain (segments); a tier may have several replicas."""
        return self.nodes[-1].segment

    def replicas(self, k: int) -> list[NodeSpec]:
        """Every replica of tier ``k`` (1-based), in file order."""
        if not 1 <= k <= self.num_nodes:
            raise SpecError(f"node {k} is not in {self.path}: nodes are numbered 1..{self.num_nodes}")
        return [n for n in self.nodes if n.segment == k]

    def node(self, k: int, replica: int = 1) -> NodeSpec:
        """Node ``k`` (1-based), replica ``replica`` (1-based) of its tier."""
        reps = self.replicas(k)
        if not 1 <= replica <= len(reps):
            raise SpecError(
                f"node {k} has no replica {replica} in {self.path}: its replicas are numbered 1..{len(reps)}"
            )
        return reps[replica - 1]

    def members(self) -> list[tuple[int, int, NodeSpec]]:
        """(tier, replica, node) of every node process of the spec."""
        out: list[tuple[int, int, NodeSpec]] = []
        for n in self.nodes:
            r = 1 + sum(1 for k, _, _ in out if k == n.segment)
            out.append((n.segment, r, n))
        return out

    def node_name(self, k: int, replica: int = 1) -> str:
        """``"K"`` for a tier with one node, ``"K.R"`` for replica R of a replicated tier."""
        return str(k) if len(self.replicas(k)) == 1 else f"{k}.{replica}"

    def addresses(self, k: int) -> list[str]:
        """The addresses of every replica of tier ``k``."""
        return [n.address for n in self.replicas(k)]

    def node_backend(self, k: int, replica: int = 1) -> tuple[str, Path | None, list[str]]:
        """Node ``k``'s backend, export folder and execution providers (its own keys, else the spec's)."""
        n = self.node(k, replica)
        return n.backend or self.backend, n.onnx_dir or self.onnx_dir, list(n.providers or self.providers)

    @property
    def pid_file(self) -> Path:
        return self.path.with_name(self.path.name + ".pids")


def parse_spec(data: dict[str, Any], path: str | Path = "<memory>", *, check_files: bool = True) -> ClusterSpec:
    """Validate a parsed spec; relative paths are resolved against the spec file's folder."""
    resolved = Path(path).resolve() if str(path) != "<memory>" else Path.cwd() / "cluster.toml"
    spec = validate(
        ClusterSpec,
        data,
        source=str(path),
        error=SpecError,
        context={"base": resolved.parent, "check_files": check_files},
        missing_fix=_FIX,
    )
    spec._path = resolved
    return spec


def load_spec(path: str | Path, *, check_files: bool = True) -> ClusterSpec:
    """Read and validate a cluster spec (TOML)."""
    data = read_toml(path, error=SpecError, what="cluster spec", hint="write one (see docs/runtime.md) or pass --spec")
    return parse_spec(data, path, check_files=check_files)
