"""Policy registry: name → class; policy files → objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import POLICY_FORMAT, ExitPolicy, thresholds_from_json

_POLICIES: dict[str, type[ExitPolicy]] = {}

#: The default exit policy and its parameters: the one that measured best on validation traces
#: (see docs/policies.md for the measurement).
DEFAULT_POLICY: str = "distree-conf"
DEFAULT_PARAMS: dict[str, Any] = {}


def register_policy(cls: type[ExitPolicy]) -> type[ExitPolicy]:
    if cls.name in _POLICIES and _POLICIES[cls.name] is not cls:
        raise ValueError(f"policy {cls.name!r} is already registered")
    _POLICIES[cls.name] = cls
    return cls


def list_policies(deployable_only: bool = False) -> list[str]:
    return sorted(n for n, c in _POLICIES.items() if c.deployable or not deployable_only)


def create_policy(name: str, num_nodes: int, thresholds: Any = None, **params: Any) -> ExitPolicy:
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(list_policies())}")
    return _POLICIES[name](num_nodes, thresholds, **params)


def create_default_policy(num_nodes: int, thresholds: Any = None, **params: Any) -> ExitPolicy:
    """The default policy (:data:`DEFAULT_POLICY` with :data:`DEFAULT_PARAMS`, overridable)."""
    return create_policy(DEFAULT_POLICY, num_nodes, thresholds, **{**DEFAULT_PARAMS, **params})


def policy_from_dict(d: dict[str, Any]) -> ExitPolicy:
    if d.get("format") != POLICY_FORMAT:
        raise ValueError(f"not a distree policy file (format {d.get('format')!r}, want {POLICY_FORMAT!r})")
    th = thresholds_from_json(d["thresholds"], d.get("thresholds_inf"))
    p = create_policy(d["policy"], int(d["num_nodes"]), th, **d.get("params", {}))
    p.calibration = d.get("calibration", {})
    return p


def load_policy(path: str | Path) -> ExitPolicy:
    """Load a policy file written by ``distree calibrate`` (or :meth:`ExitPolicy.save`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no policy file at {path}; create one with `distree calibrate`")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"policy file {path} is not valid JSON: {e}") from e
    return policy_from_dict(d)
