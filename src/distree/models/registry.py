"""Model registry: where a model comes from, what its builder accepts, and building it.

A *builder* takes ``num_nodes`` plus keyword arguments and returns a :class:`MultiExitNetwork`
(usually through :func:`~distree.models.from_sequential`). A model is named by any of:

- a name registered with ``@register_model`` (distree's own models, or a module that registers
  its builders when imported);
- a name an installed package declares in the ``distree.models`` entry-point group, e.g. in its
  ``pyproject.toml``: ``[project.entry-points."distree.models"] my-vgg = "mypkg.models:vgg"``;
- an import path ``package.module:function`` to any builder, no registration needed (a module
  not found on ``sys.path`` is looked for in the current directory too, as ``python -m`` does,
  so the ``distree`` command finds the modules of the project folder it runs in).

Builders declare what they accept by their signature (:class:`ModelBuilder` inspects it): an
unknown argument is an error that lists the accepted ones, and the trainer passes the dataset's
``num_classes`` / ``in_channels`` / ``input_size`` only to builders that take them.
``create_model`` records the name, the builder's import path and the arguments on the network
so that a checkpoint rebuilds it in any process (:func:`resolve_model` with ``builder_ref``).
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import ModelError
from .multi_exit import MultiExitNetwork

log = logging.getLogger(__name__)

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


#: The entry-point group installed packages declare their model builders in.
ENTRY_POINT_GROUP = "distree.models"


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


def _entry_points() -> dict[str, Any]:
    """``distree.models`` entry points of the installed distributions, by name (first on sys.path wins)."""
    from importlib.metadata import entry_points

    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def list_models(pattern: str = "*") -> list[str]:
    """Model names matching a glob pattern, sorted: registered builders and ``distree.models`` entry points."""
    _load_builtins()
    names = set(_REGISTRY) | set(_entry_points())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def _import_module(module: str, ref: str) -> Any:
    """Import ``module`` for model ``ref``; look in the current directory too, as ``python -m`` does."""
    top = module.split(".")[0]
    for attempt in range(2):
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as e:
            ours = e.name is not None and (module == e.name or module.startswith(e.name + "."))
            if not ours:
                raise ModelError(
                    f"importing module {module!r} for model {ref!r} failed: {e}; install what it needs"
                ) from e
            cwd = os.getcwd()
            if attempt == 0 and cwd not in sys.path and "" not in sys.path:
                sys.path.append(cwd)
                importlib.invalidate_caches()
                continue
            raise ModelError(
                f"model {ref!r} needs module {module!r}, which cannot be imported (no module named {e.name!r}); "
                f"install the package that provides it, or add the folder holding {top}.py (or {top}/) to "
                "PYTHONPATH"
            ) from e
        except Exception as e:  # noqa: BLE001 - any error while importing user code, with context
            raise ModelError(f"importing module {module!r} for model {ref!r} failed: {type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")


def import_builder(ref: str) -> Builder:
    """The builder at import path ``package.module:function`` (attribute paths like ``mod:Cls.build`` work)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ModelError(f"model reference {ref!r} must look like 'package.module:function'")
    obj: Any = _import_module(module, ref)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module!r} has no attribute {attr!r} (model {ref!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{ref!r} is a {type(obj).__name__}, not a builder function")
    return obj


def _import_ref(fn: Builder) -> str | None:
    """How another process finds ``fn``: ``module:qualname``, or the module that registers it by name."""
    mod = getattr(fn, "__module__", None)
    if not mod or mod == "__main__":
        return None
    qual = getattr(fn, "__qualname__", "")
    return f"{mod}:{qual}" if qual and "<locals>" not in qual else mod


@dataclass(frozen=True)
class ModelBuilder:
    """A resolved model: its name, the builder function and the import path that finds it again."""

    name: str
    fn: Builder
    ref: str | None  # "module:function", or "module" whose import registers ``name``; None: not importable
    origin: str  # "registered", "imported" or "entry point of <distribution>"

    @cached_property
    def signature(self) -> inspect.Signature:
        try:
            return inspect.signature(self.fn)
        except (TypeError, ValueError) as e:
            raise ModelError(f"cannot read the arguments of builder {self.name!r}: {e}") from e

    @property
    def takes_any(self) -> bool:
        """The builder has ``**kwargs``: it accepts every keyword argument."""
        return any(p.kind is p.VAR_KEYWORD for p in self.signature.parameters.values())

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        """Keyword arguments the builder takes, besides ``num_nodes``."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {n: p for n, p in self.signature.parameters.items() if p.kind in kinds and n != "num_nodes"}

    def accepts(self, arg: str) -> bool:
        return arg in self.parameters or self.takes_any

    def describe(self) -> str:
        """``width=16, in_channels=1, ...`` (``name`` alone: required)."""
        parts = [n if p.default is p.empty else f"{n}={p.default!r}" for n, p in self.parameters.items()]
        if self.takes_any:
            parts.append("**kwargs")
        return ", ".join(parts)

    def check_args(self, args: Mapping[str, Any], *, complete: bool = True) -> None:
        """Raise :class:`ModelError` for arguments the builder does not take (and, when ``complete``,
        for required ones missing)."""
        params = self.signature.parameters
        if "num_nodes" not in params and not self.takes_any:
            raise ModelError(f"builder {self.name!r} must take a 'num_nodes' argument (it takes: {self.describe()})")
        if "num_nodes" in args:
            raise ModelError("num_nodes is not a model argument: give the node count (--nodes / num_nodes) instead")
        unknown = sorted(a for a in args if not self.accepts(a))
        if unknown:
            raise ModelError(
                f"model {self.name!r} takes no argument {', '.join(map(repr, unknown))}; "
                f"it accepts: {self.describe() or 'no arguments besides num_nodes'}"
            )
        missing = [n for n, p in self.parameters.items() if p.default is p.empty and n not in args]
        if complete and missing:
            raise ModelError(
                f"model {self.name!r} needs argument {', '.join(map(repr, missing))}; pass it with --model-args "
                f"(it accepts: {self.describe()})"
            )

    def build(self, num_nodes: int, **kwargs: Any) -> MultiExitNetwork:
        """Call the builder; record name, import path and arguments on the network for checkpoints."""
        self.check_args(kwargs)
        net = self.fn(num_nodes=num_nodes, **kwargs)
        if not isinstance(net, MultiExitNetwork):
            raise ModelError(
                f"builder {self.name!r} returned a {type(net).__name__}, not a MultiExitNetwork; build the network "
                "from your blocks with distree.from_sequential(blocks, num_nodes, example_input, num_classes=...) "
                "and return that"
            )
        if net.num_nodes != num_nodes:
            raise ModelError(f"builder {self.name!r} was asked for {num_nodes} nodes but built {net.num_nodes}")
        net.model_name = self.name
        net.model_args = {"num_nodes": num_nodes, **kwargs}
        net.builder_ref = self.ref
        return net


def _unknown(name: str) -> ModelError:
    return ModelError(
        f"unknown model {name!r}; available: {', '.join(list_models())}. A builder of your own: pass "
        "'package.module:function', or declare it in the 'distree.models' entry-point group of its package"
    )


def resolve_model(name: str, builder_ref: str | None = None) -> ModelBuilder:
    """Find model ``name``: a registered name, an import path ``module:function`` or an entry point.

    ``builder_ref`` (from a checkpoint) says where the builder was found when the model was built:
    ``module:function`` is imported directly; a bare ``module`` is imported when ``name`` is not
    registered yet (the module registers it).
    """
    _load_builtins()
    if builder_ref and ":" in builder_ref:
        return ModelBuilder(name, import_builder(builder_ref), builder_ref, "imported")
    if name not in _REGISTRY and builder_ref:
        _import_module(builder_ref, name)
    if name in _REGISTRY:
        fn = _REGISTRY[name]
        return ModelBuilder(name, fn, _import_ref(fn), "registered")
    if ":" in name:
        return ModelBuilder(name, import_builder(name), name, "imported")
    eps = _entry_points()
    if name in eps:
        ep = eps[name]
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        try:
            fn = ep.load()
        except ModuleNotFoundError as e:
            raise ModelError(
                f"model {name!r} is declared by {dist} as {ep.value!r}, but module {e.name!r} cannot be imported; "
                f"reinstall {dist}"
            ) from e
        except Exception as e:  # noqa: BLE001 - user code, re-raised with context
            raise ModelError(
                f"loading model {name!r} ({ep.value!r} from {dist}) failed: {type(e).__name__}: {e}"
            ) from e
        if not callable(fn):
            raise ModelError(f"entry point {name!r} of {dist} ({ep.value!r}) is not a builder function")
        return ModelBuilder(name, fn, ep.value, f"entry point of {dist}")
    raise _unknown(name)


def create_model(name: str, num_nodes: int = 4, **kwargs: Any) -> MultiExitNetwork:
    """Build model ``name`` (registered name, entry point or ``module:function``) over ``num_nodes`` nodes."""
    return resolve_model(name).build(num_nodes, **kwargs)


def parse_model_args(items: str | list[str] | None) -> dict[str, Any]:
    """``'{"width": 0.5}'`` (a JSON object) or ``"width=0.5,depth=8"`` / ``["width=0.5", "depth=8"]``.

    Values of ``key=value`` pairs are read as JSON when they parse (numbers, booleans, lists), else
    kept as strings; pairs are separated by commas (a comma inside a value such as ``[1,2]`` is kept).
    """
    if items is None:
        return {}
    out: dict[str, Any] = {}
    for item in [items] if isinstance(items, str) else items:
        text = item.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ModelError(f"model arguments {text!r} are not valid JSON: {e}") from e
            if not isinstance(obj, dict):
                raise ModelError(f"model arguments must be a JSON object, got {text!r}")
            out.update(obj)
            continue
        for pair in re.split(r",\s*(?=[A-Za-z_][A-Za-z0-9_]*\s*=)", text):
            if not pair.strip():
                continue
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ModelError(f"model arguments must be KEY=VALUE pairs or a JSON object, got {pair.strip()!r}")
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value.strip()
    return out
