"""Model registry: ``@register_model`` builders, ``create_model(name, ...)``, ``list_models()``.

A builder takes ``num_nodes`` plus keyword arguments and returns a :class:`MultiExitNetwork`.
``create_model`` records the name and arguments on the network so a checkpoint can rebuild it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from .multi_exit import MultiExitNetwork

Builder = Callable[..., MultiExitNetwork]
_REGISTRY: dict[str, Builder] = {}
_BUILTIN_MODULES = ("small_cnn", "wrn")
_builtins_loaded = False


def _load_builtins() -> None:
    """Import the modules that register the built-in models (once, on first use of the registry)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{mod}")


def register_model(name: str | None = None) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` (default: the function name with '_' → '-')."""

    def deco(fn: Builder) -> Builder:
        _load_builtins()  # a name taken by a built-in model is refused now, not on a later lookup
        key = name or fn.__name__.replace("_", "-")
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    _load_builtins()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, num_nodes: int = 4, **kwargs: Any) -> MultiExitNetwork:
    """Build a registered model split over ``num_nodes`` nodes."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    net = _REGISTRY[name](num_nodes=num_nodes, **kwargs)
    net.model_name = name
    net.model_args = {"num_nodes": num_nodes, **kwargs}
    return net
