"""The schema layer shared by every file distree reads: base models, file loading, one-line errors.

Each file format (cluster spec, scenario, policy file, checkpoint sidecar, trace header, device
profile, training config) is a pydantic model built on :class:`Schema`: unknown keys are
forbidden, types are strict (a string is not a number, ``true`` is not an integer), numbers must
be finite. :func:`validate` turns a :class:`pydantic.ValidationError` into the area's
:class:`~distree.errors.DistreeError` with ONE line naming the file, the section, the key and
the fix, e.g.::

    cluster.toml: [batching] 'max_batch_size' must be >= 1, got 0
    scenario.toml: [workload] unknown key 'rate' (allowed: arrival, ..., think_s; did you mean 'rate_per_s'?)
    policy.json: missing key 'thresholds' (re-run `distree calibrate` to write a complete policy file)

This module imports pydantic and the standard library only (no torch, no numpy).
"""

from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError
from pydantic_core import ErrorDetails

from .errors import DistreeError

M = TypeVar("M", bound=BaseModel)

#: The version every format is at; a file without ``format_version`` is read as this version.
FORMAT_VERSION = 1


class Schema(BaseModel):
    """Base of every file schema: unknown keys forbidden, strict types, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class FrozenSchema(Schema):
    """A schema whose instances are immutable (the runtime's spec objects)."""

    model_config = ConfigDict(frozen=True)


class LocatedError(ValueError):
    """Raised by a validator to put its message at a key below the one being validated.

    ``LocatedError("must be ...", ("nodes", 2, "cert"))`` inside a model validator reports the
    message at ``[[nodes]] #3 'cert'`` instead of at the model.
    """

    def __init__(self, msg: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(msg)
        self.loc = tuple(loc)


def _whole_number(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


#: A path written as a string (relative paths are resolved by the format's own validators).
PathStr = Annotated[Path, Strict(False)]
#: An integer that may also be written as a whole float (``requests = 1e6`` in TOML).
WholeInt = Annotated[int, BeforeValidator(_whole_number)]


def _check_version(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and v > FORMAT_VERSION:
        raise ValueError(
            f"is {v}, newer than this distree reads ({FORMAT_VERSION}); "
            "upgrade distree or rewrite the file with this version"
        )
    return v


#: ``format_version``: 1 when absent (files written before the field existed); newer versions are refused.
FormatVersion = Annotated[typing.Literal[1], BeforeValidator(_check_version)]


# ---------------------------------------------------------------------------------------------- errors
_TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "path_type": "a path (a string)",
    "none_required": "absent",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_BOUND_KEYS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def _short(v: Any, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _unwrap(t: Any) -> Any:
    """Strip Annotated / Optional wrappers: ``Annotated[X | None, ...]`` -> ``X``."""
    while True:
        origin = get_origin(t)
        if origin is Annotated:
            t = get_args(t)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _walk(root: type[BaseModel] | None, parts: tuple[Any, ...]) -> tuple[type[BaseModel] | None, Any, Any]:
    """Follow ``parts`` from ``root``: (the model owning the last part, that part's field info, its type)."""
    t: Any = root
    owner: type[BaseModel] | None = None
    info: Any = None
    for p in parts:
        t = _unwrap(t)
        if _is_model(t) and isinstance(p, str):
            owner, info = t, t.model_fields.get(p)
            t = info.annotation if info is not None else Any
            continue
        origin, args = get_origin(t), get_args(t)
        if origin in (list, tuple, set, frozenset):
            t = args[0] if args else Any
        elif origin is dict:
            t = args[1] if len(args) == 2 else Any
        else:
            t = Any
        owner, info = None, None
    return owner, info, _unwrap(t)


def _section(parts: tuple[Any, ...]) -> str:
    """``('nodes', 1)`` -> ``[[nodes]] #2``; ``('network', 'hops')`` -> ``[network.hops]``; ``()`` -> ``''``."""
    if not parts:
        return ""
    ints = [p for p in parts if isinstance(p, int)]
    if len(ints) == 1 and isinstance(parts[-1], int):
        return f"[[{'.'.join(str(p) for p in parts[:-1])}]] #{parts[-1] + 1}"
    tokens: list[str] = []
    for p in parts:
        if isinstance(p, int) and tokens:
            tokens[-1] += f" #{p + 1}"
        else:
            tokens.append(str(p))
    return "[" + ".".join(tokens) + "]"


def _split_key(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """(section parts, key): the key is the last name plus any list indices after it (``thresholds[2]``)."""
    j = len(loc) - 1
    while j >= 0 and isinstance(loc[j], int):
        j -= 1
    if j < 0:
        return loc, None
    key = str(loc[j]) + "".join(f"[{i}]" for i in loc[j + 1 :])
    return loc[:j], key


def _allowed(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _reason(e: ErrorDetails, table_word: str) -> str:
    typ, inp, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if typ in _TYPE_WORDS:
        word = _TYPE_WORDS[typ].replace("a table", table_word)
        return f"must be {word}, got {_short(inp)}"
    if typ == "literal_error":
        return f"must be {ctx.get('expected')}, got {_short(inp)}"
    if typ in _BOUNDS:
        bound = ctx.get(_BOUND_KEYS[typ])
        if isinstance(bound, float) and bound.is_integer() and abs(bound) < 1e15:
            bound = int(bound)  # ">= 0", not ">= 0.0"
        return f"must be {_BOUNDS[typ]} {bound}, got {_short(inp)}"
    if typ == "finite_number":
        return f"must be a finite number, got {_short(inp)}"
    if typ in ("too_short", "too_long"):
        n = ctx.get("min_length" if typ == "too_short" else "max_length")
        most = "at least" if typ == "too_short" else "at most"
        return f"needs {most} {n} entr{'y' if n == 1 else 'ies'}, got {ctx.get('actual_length')}"
    msg = str(e.get("msg", "is invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg.replace("Input should be", "must be").replace("Value should be", "must be")


def format_error(
    err: ValidationError,
    source: str,
    model: type[BaseModel] | None = None,
    *,
    loc_prefix: tuple[Any, ...] = (),
    missing_fix: str | None = None,
    noun: str = "key",
) -> str:
    """One line for the first problem in ``err``: ``SOURCE: [SECTION] 'KEY' <what is wrong and the fix>``.

    ``model`` (the schema validated) lets the message list the allowed keys and describe a missing
    one; ``loc_prefix`` is prepended to every location (a sub-document of a larger file);
    ``missing_fix`` is appended to "missing key" messages; ``noun`` names the keys ("parameter").
    """
    e = err.errors(include_url=False)[0]
    loc = tuple(e["loc"])
    ctx_err = (e.get("ctx") or {}).get("error")
    if isinstance(ctx_err, LocatedError):
        loc = loc + ctx_err.loc
    table_word = "an object" if source.endswith(".json") else "a table"
    full = loc_prefix + loc
    typ = e["type"]
    if typ in ("value_error", "assertion_error"):
        _, info, t = _walk(model, loc)
        if not loc or _is_model(t):  # a whole section
            where = _section(full)
            return f"{source}: {where + ' ' if where else ''}{_reason(e, table_word)}"
    parts, key = _split_key(full)
    where = _section(parts)
    head = f"{source}: {where + ' ' if where else ''}"
    if typ == "extra_forbidden":
        _, _, t = _walk(model, loc[:-1])
        allowed = _allowed(t) if _is_model(t) else []
        text = f"unknown {noun} '{key}'"
        if allowed:
            text += f" (allowed: {', '.join(allowed)}"
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            text += f"; did you mean '{close[0]}'?)" if close else ")"
        elif model is not None:
            text += " (it takes none; remove it)"
        return head + text
    if typ == "missing":
        _, info, _ = _walk(model, loc)
        hints = [h for h in ((info.description if info is not None else None), missing_fix) if h]
        return head + f"missing {noun} '{key}'" + (f" ({'; '.join(hints)})" if hints else "")
    return head + f"'{key}' {_reason(e, table_word)}"


def validate(
    model: type[M],
    data: Any,
    *,
    source: str,
    error: type[DistreeError],
    context: dict[str, Any] | None = None,
    loc_prefix: tuple[Any, ...] = (),
    missing_fix: str | None = None,
    noun: str = "key",
) -> M:
    """``model.model_validate(data)``; a problem becomes ``error`` with one line from :func:`format_error`."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        msg = format_error(e, source, model, loc_prefix=loc_prefix, missing_fix=missing_fix, noun=noun)
        raise error(msg) from None


def one_line(text: object) -> str:
    """Collapse a message onto one line (for errors that quote a multi-line library message)."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------- files
def read_toml(path: str | Path, *, error: type[DistreeError], what: str, hint: str) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is ``error`` with one line."""
    p = Path(path)
    if not p.is_file():
        raise error(f"no {what} at {p}; {hint}")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise error(f"{p} is not valid TOML: {one_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {p}: {one_line(e)}") from None


def read_json(path: str | Path, *, error: type[DistreeError], what: str, hint: str) -> Any:
    """Parse a JSON file; a missing file or a syntax error is ``error`` with one line."""
    p = Path(path)
    if not p.is_file():
        raise error(f"no {what} at {p}; {hint}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{what} {p} is not valid JSON: {one_line(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {p}: {one_line(e)}") from None


def require_table(data: Any, *, source: str, error: type[DistreeError], what: str) -> dict[str, Any]:
    """The top level of a JSON document must be an object."""
    if not isinstance(data, dict):
        raise error(f"{source}: a {what} must be a JSON object, got {type(data).__name__}")
    return data


__all__ = [
    "FORMAT_VERSION",
    "FormatVersion",
    "FrozenSchema",
    "LocatedError",
    "PathStr",
    "Schema",
    "WholeInt",
    "format_error",
    "one_line",
    "read_json",
    "read_toml",
    "require_table",
    "validate",
]
