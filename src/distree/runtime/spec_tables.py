"""The tables of a cluster spec below its top level: ``[tls]`` (:class:`TLSSpec`), ``[[nodes]]``
(:class:`NodeSpec`), ``[access]`` (:class:`AccessSpec`) and ``[batching]`` (:class:`BatchingSpec`),
each with its own fields and checks; also the path and address checks the spec's fields share.

The whole spec, its TOML format and the checks across tables are in :mod:`.spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .._schema import FrozenSchema
from ..errors import SpecError

Backend = Literal["torch", "onnx", "onnx-int8"]


def resolve_path(v: Any, info: ValidationInfo) -> Any:
    """A path string relative to the spec file's folder; checked to exist unless ``check_files`` is off."""
    if v is None:
        return None
    if not isinstance(v, str | Path):
        raise ValueError(f"must be a path (a string), got {v!r}")
    ctx = info.context or {}
    base = Path(ctx.get("base", Path.cwd()))
    p = Path(v).expanduser()
    p = p if p.is_absolute() else base / p
    if ctx.get("check_files", True) and not p.exists():
        raise ValueError(f"= {str(v)!r} does not exist (looked at {p}); fix the path (relative to the spec file)")
    return p


def check_address(where: str, addr: str) -> str:
    """``host:port`` with a port in 1..65535, or :class:`SpecError` naming ``where``."""
    if not _address_ok(addr):
        raise SpecError(f"{where}: address {addr!r} must be 'host:port' with a port in 1..65535")
    return addr


def _address_ok(addr: str) -> bool:
    host, sep, port = addr.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


class TLSSpec(FrozenSchema):
    """``[tls]``: TLS on every channel (client->node 1 and node->node)."""

    ca: Path = Field(description="the CA certificate, e.g. certs/ca.pem from `distree certs create`")
    client_auth: bool = True
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None  # override for hostname verification (ssl_target_name_override)
    metrics: bool = True  # serve /metrics over HTTPS too (with client_auth: scrapers present a CA certificate)

    resolve_paths = field_validator("ca", "client_cert", "client_key", mode="before")(resolve_path)

    @model_validator(mode="after")
    def _pair(self) -> TLSSpec:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("give both client_cert and client_key, or neither")
        return self


class NodeSpec(FrozenSchema):
    """One ``[[nodes]]`` table."""

    segment: int = Field(ge=1, description="1-based: node K runs segment K and exit K")  # default: list order
    address: str = Field(description="host:port where the previous node (or the client) reaches this node")
    listen: str  # default: address
    metrics_port: int = Field(0, ge=0, le=65535)
    cert: Path | None = None
    key: Path | None = None
    speed: dict[str, Any] | None = None
    nominal_compute_ms: float | None = Field(None, gt=0, lt=3.6e6)
    backend: Backend | None = None  # default: the spec's top-level backend
    onnx_dir: Path | None = None  # default: the spec's top-level onnx_dir
    providers: list[str] | None = Field(None, min_length=1)  # default: the spec's top-level providers

    @model_validator(mode="before")
    @classmethod
    def _listen_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "listen" not in data and isinstance(data.get("address"), str):
            data = {**data, "listen": data["address"]}
        return data

    resolve_paths = field_validator("cert", "key", "onnx_dir", mode="before")(resolve_path)

    @field_validator("address", "listen")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _address_ok(v):
            raise ValueError(f"must be 'host:port' with a port in 1..65535, got {v!r}")
        return v

    @field_validator("speed", mode="before")
    @classmethod
    def _speed(cls, v: Any, info: ValidationInfo) -> Any:
        from ..fluctuation import speed_profile_from_spec

        if v is None:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = {"kind": "constant", "factor": float(v)}
        if not isinstance(v, dict):
            raise ValueError(f'must be a factor or a table like {{ kind = "constant", factor = 0.5 }}, got {v!r}')
        v = dict(v)
        ctx = info.context or {}
        if v.get("kind") == "trace" and isinstance(v.get("path"), str):
            p = Path(v["path"]).expanduser()
            v["path"] = str(p if p.is_absolute() else Path(ctx.get("base", Path.cwd())) / p)
        if ctx.get("check_files", True):
            try:
                speed_profile_from_spec(v)
            except (ValueError, OSError) as e:
                raise ValueError(f"is not a valid speed profile: {e}") from None
        return v


ForwardRole = Literal["predecessor", "node", "operator", "any"]
InfoRole = Literal["predecessor", "node", "client", "operator", "any"]
InferenceRole = Literal["client", "operator", "node", "any"]


def _default_forward() -> list[ForwardRole]:
    return ["predecessor"]


def _default_info() -> list[InfoRole]:
    return ["predecessor", "operator"]


def _default_inference() -> list[InferenceRole]:
    return ["client", "operator"]


class AccessSpec(FrozenSchema):
    """``[access]``: who may call what (see :mod:`distree.runtime.auth` and docs/security.md)."""

    forward: list[ForwardRole] = Field(default_factory=_default_forward, min_length=1)
    info: list[InfoRole] = Field(default_factory=_default_info, min_length=1)
    inference: list[InferenceRole] = Field(default_factory=_default_inference, min_length=1)
    token_file: Path | None = None  # shared secret of the internal RPCs when there is no mutual TLS
    client_tokens_file: Path | None = None  # bearer tokens the inference service accepts, one per line
    allow_unauthenticated: bool = False  # internal RPCs open without TLS or token on non-loopback addresses

    resolve_paths = field_validator("token_file", "client_tokens_file", mode="before")(resolve_path)


class BatchingSpec(FrozenSchema):
    """``[batching]``: optional dynamic batching, per node."""

    max_batch_size: int = Field(1, ge=1)
    max_queue_delay_ms: float = Field(0.0, ge=0)
