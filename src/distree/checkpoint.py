"""Checkpoints: safetensors weights + a JSON sidecar that rebuilds the model with no other input.

Layout of a checkpoint directory::

    model.safetensors   # the MultiExitNetwork state dict
    model.json          # format, model name + builder import path + args, num_nodes, input shape,
                        # classes, normalisation, cost profile, training config, library versions
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from .models import CostProfile, MultiExitNetwork, resolve_model

FORMAT = "distree-checkpoint/1"
WEIGHTS = "model.safetensors"
SIDECAR = "model.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its description."""


def library_versions() -> dict[str, str]:
    import numpy

    from . import __version__

    return {
        "distree": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p / WEIGHTS, p / SIDECAR


def save_checkpoint(
    model: MultiExitNetwork,
    path: str | Path,
    *,
    classes: list[str],
    normalization: dict[str, list[float]],
    train_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into directory ``path``; return the directory."""
    from safetensors.torch import save_file

    if model.model_name is None:
        raise CheckpointError(
            "this model was not built by create_model, so a checkpoint could not rebuild it; build it with "
            "create_model('package.module:builder', ...) or a registered name"
        )
    wpath, jpath = _paths(path)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = wpath.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(wpath)
    meta = {
        "format": FORMAT,
        "model": model.model_name,
        "builder": model.builder_ref,  # import path of the builder: a fresh process rebuilds the model from it
        "model_args": model.model_args,
        "num_nodes": model.num_nodes,
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "classes": list(classes),
        "normalization": normalization,
        "cost_profile": model.cost_profile().to_dict(),
        "feature_dims": model.feature_dims(),
        "train_config": train_config or {},
        "versions": library_versions(),
        **(extra or {}),
    }
    jtmp = jpath.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps(meta, indent=2))
    jtmp.replace(jpath)
    return wpath.parent


def read_sidecar(path: str | Path) -> dict[str, Any]:
    _, jpath = _paths(path)
    if not jpath.is_file():
        raise CheckpointError(f"no checkpoint sidecar at {jpath}; expected a directory with {WEIGHTS} and {SIDECAR}")
    try:
        meta = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint sidecar {jpath} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{jpath} is not a distree checkpoint (format {meta.get('format')!r}, want {FORMAT!r})")
    return meta


def _shapes_match(model: MultiExitNetwork, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(state[k].shape == v.shape for k, v in own.items() if k in state)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[MultiExitNetwork, dict[str, Any]]:
    """Rebuild the model from the sidecar and load its weights. Returns ``(model in eval mode, sidecar)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    wpath, _ = _paths(path)
    meta = read_sidecar(path)
    if not wpath.is_file():
        raise CheckpointError(f"checkpoint weights {wpath} are missing")
    try:
        args = dict(meta["model_args"])
        nodes = int(args.pop("num_nodes", meta.get("num_nodes", 0)))
        model = resolve_model(meta["model"], meta.get("builder")).build(nodes, **args)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild model from {path}: {e}") from e
    try:
        state = load_file(str(wpath), device=map_location)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights {wpath} are corrupt or truncated: {e}") from e
    missing, unexpected = model.load_state_dict(state, strict=False) if _shapes_match(model, state) else ([], [])
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {wpath} does not match model {meta['model']} {meta['model_args']}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if not _shapes_match(model, state):
        bad = [k for k, v in model.state_dict().items() if k in state and state[k].shape != v.shape]
        raise CheckpointError(
            f"checkpoint {wpath} has tensors of the wrong shape for {meta['model']} {meta['model_args']}: {bad[:5]}"
        )
    if "cost_profile" in meta:
        model._cost = CostProfile.from_dict(meta["cost_profile"])
    return model.eval(), meta
