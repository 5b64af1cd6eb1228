"""Writing a cluster spec: :func:`spec_toml` gives the TOML text of a spec built from Python values
(the inverse of :func:`.spec.parse_spec`, for tools, tests and benchmarks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
    checkpoint: str | Path | None,
    policy: str | Path,
    nodes: list[dict[str, Any]],
    *,
    batching: dict[str, Any] | None = None,
    tls: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    """TOML text of a cluster spec (the inverse of :func:`.spec.parse_spec`, for tools and tests)."""
    lines = [f"checkpoint = {_toml_value(checkpoint)}"] if checkpoint is not None else []
    lines.append(f"policy = {_toml_value(policy)}")
    lines += [f"{k} = {_toml_value(v)}" for k, v in options.items()]
    for name, table in (("batching", batching), ("tls", tls)):
        if table:
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for n in nodes:
        lines += ["", "[[nodes]]"] + [f"{k} = {_toml_value(v)}" for k, v in n.items()]
    return "\n".join(lines) + "\n"
