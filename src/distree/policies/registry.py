"""Policy registry: name → class; policy files → objects."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from .._schema import FormatVersion, LocatedError, Schema, read_json, require_table, validate
from ..errors import PolicyError
from ._params import validate_params
from .base import ExitPolicy, thresholds_from_json

_POLICIES: dict[str, type[ExitPolicy]] = {}

#: The default exit policy and its parameters: the one that measured best on validation traces
#: (see docs/policies.md for the measurement).
DEFAULT_POLICY: str = "distree-conf"
DEFAULT_PARAMS: dict[str, Any] = {}

_FIX = "re-run `distree calibrate` to write a complete policy file"


class PolicyFileNotFound(PolicyError, FileNotFoundError):
    """There is no policy file at the path given."""


class PolicyFile(Schema):
    """A policy file (JSON), as written by ``distree calibrate`` / :meth:`ExitPolicy.save`."""

    format: Literal["distree-policy/1"] = Field(description="a policy file says it is one")
    format_version: FormatVersion = 1
    policy: str = Field(description="the policy's name, see `distree policies`")
    num_nodes: int = Field(ge=1)
    deployable: bool | None = None  # informational: the policy class says whether it is
    thresholds: list[float | None] = Field(min_length=1, description="one threshold per node, null for +-inf")
    thresholds_inf: list[Literal["inf", "-inf"] | None] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> PolicyFile:
        if self.policy not in _POLICIES:
            raise LocatedError(
                f"must be a registered policy, got {self.policy!r} {_available(self.policy)}", ("policy",)
            )
        if len(self.thresholds) != self.num_nodes:
            raise LocatedError(
                f"has {len(self.thresholds)} entries but num_nodes is {self.num_nodes}: one threshold per node",
                ("thresholds",),
            )
        if self.thresholds_inf is not None and len(self.thresholds_inf) != len(self.thresholds):
            raise LocatedError(
                f"has {len(self.thresholds_inf)} entries for {len(self.thresholds)} thresholds", ("thresholds_inf",)
            )
        return self


def _available(name: str) -> str:
    close = difflib.get_close_matches(name, list_policies(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"(available: {', '.join(list_policies())}{hint})"


def register_policy(cls: type[ExitPolicy]) -> type[ExitPolicy]:
    if cls.name in _POLICIES and _POLICIES[cls.name] is not cls:
        raise ValueError(f"policy {cls.name!r} is already registered")
    _POLICIES[cls.name] = cls
    return cls


def list_policies(deployable_only: bool = False) -> list[str]:
    return sorted(n for n, c in _POLICIES.items() if c.deployable or not deployable_only)


def policy_class(name: str) -> type[ExitPolicy]:
    """The class registered as ``name``; :class:`PolicyError` naming the available ones otherwise."""
    if name not in _POLICIES:
        raise PolicyError(f"unknown policy {name!r} {_available(name)}")
    return _POLICIES[name]


def policy_params(name: str) -> dict[str, Any]:
    """The parameters a policy takes and their defaults (from its constructor)."""
    return validate_params(policy_class(name), {}, source=f"policy {name!r}")


def create_policy(name: str, num_nodes: int, thresholds: Any = None, **params: Any) -> ExitPolicy:
    """A policy by name; an unknown name or parameter, or a bad value, is one-line :class:`PolicyError`."""
    cls = policy_class(name)
    return cls(num_nodes, thresholds, **validate_params(cls, params, source=f"policy {name!r}"))


def create_default_policy(num_nodes: int, thresholds: Any = None, **params: Any) -> ExitPolicy:
    """The default policy (:data:`DEFAULT_POLICY` with :data:`DEFAULT_PARAMS`, overridable)."""
    return create_policy(DEFAULT_POLICY, num_nodes, thresholds, **{**DEFAULT_PARAMS, **params})


def policy_from_dict(d: dict[str, Any], source: str = "policy file") -> ExitPolicy:
    """A policy from the contents of a policy file; ``source`` names the file in error messages.

    A file without ``format_version`` (written before the field existed) is read as version 1.
    """
    d = require_table(d, source=source, error=PolicyError, what="policy file")
    f = validate(PolicyFile, d, source=source, error=PolicyError, missing_fix=_FIX)
    cls = _POLICIES[f.policy]
    params = validate_params(cls, f.params, source=source, loc_prefix=("params",))
    th = thresholds_from_json(f.thresholds, f.thresholds_inf)
    p = cls(f.num_nodes, th, **params)
    p.calibration = f.calibration
    return p


def load_policy(path: str | Path) -> ExitPolicy:
    """Load a policy file written by ``distree calibrate`` (or :meth:`ExitPolicy.save`)."""
    path = Path(path)
    if not path.is_file():
        raise PolicyFileNotFound(f"no policy file at {path}; create one with `distree calibrate`")
    d = read_json(path, error=PolicyError, what="policy file", hint="create one with `distree calibrate`")
    return policy_from_dict(d, source=str(path))
