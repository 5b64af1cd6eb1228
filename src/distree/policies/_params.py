"""Policy parameters: declared by each policy's constructor, validated by one schema.

A policy declares its parameters as keyword-only constructor arguments with type hints and
defaults (``measure: Measure = "tv"``, ``alpha: Annotated[float, Ge(0)] = 0.5``). The schema of a
policy's parameters is derived from that signature, so the constructor is the only list: an
unknown name (``mesure``), a wrong type or a value out of range is a :class:`PolicyError` naming
the parameter and the valid ones, whether it came from ``--param``, a policy file or Python.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import TYPE_CHECKING, Any

from pydantic import create_model

from .._schema import Schema, validate
from ..errors import PolicyError

if TYPE_CHECKING:
    from .base import ExitPolicy


def declared_params(cls: type[ExitPolicy]) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of ``cls.__init__`` (its policy parameters), in declaration order."""
    sig = inspect.signature(cls.__init__)
    return {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


@functools.cache
def params_model(cls: type[ExitPolicy]) -> type[Schema]:
    """A schema with one field per declared parameter (type hint and default from the signature)."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {}
    for name, p in declared_params(cls).items():
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(f"{cls.__name__}Params", __base__=Schema, **fields)


def validate_params(
    cls: type[ExitPolicy], params: dict[str, Any], *, source: str, loc_prefix: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """Every declared parameter of ``cls`` (given or default), validated; else one-line :class:`PolicyError`."""
    m = validate(params_model(cls), params, source=source, error=PolicyError, loc_prefix=loc_prefix, noun="parameter")
    return m.model_dump()
