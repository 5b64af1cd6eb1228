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
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ._schema import FORMAT_VERSION, FormatVersion, Schema, read_json, require_table, validate
from .errors import CheckpointError, ConfigError
from .models.cost import CostProfileTable

if TYPE_CHECKING:  # reading a sidecar needs no torch (ONNX nodes read it on devices without torch)
    import torch

    from .models import MultiExitNetwork

FORMAT = "distree-checkpoint/1"
WEIGHTS = "model.safetensors"
SIDECAR = "model.json"
_FIX = "the checkpoint is incomplete; train it again with `distree train`"


class Normalization(Schema):
    """Per-channel input normalisation: ``(x / 255 - mean) / std``."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _channels(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"'mean' has {len(self.mean)} channels but 'std' has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"'std' must be > 0 for every channel, got {self.std}")
        return self


class Sidecar(Schema):
    """``model.json``: everything needed to rebuild the model without other input."""

    format: Literal["distree-checkpoint/1"] = Field(description="a checkpoint sidecar says it is one")
    format_version: FormatVersion = 1
    model: str = Field(description="the registered model name (see `distree models`)")
    builder: str | None = None  # import path of the builder ("module:function" or a registering module)
    model_args: dict[str, Any] = Field(default_factory=dict)
    num_nodes: int = Field(ge=1)
    num_classes: int = Field(ge=1)
    input_shape: list[int] = Field(min_length=1, description="(C, H, W) of one input")
    classes: list[str] = Field(default_factory=list)
    normalization: Normalization | None = None
    cost_profile: CostProfileTable
    feature_dims: list[int] = Field(default_factory=list)
    heads: list[dict[str, Any] | None] | None = None  # every exit head's spec (None: a custom factory)
    train_config: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    epoch: int | None = Field(None, ge=1)  # written by the trainer
    val_acc: list[float] | None = None
    dataset: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # anything else given to save_checkpoint(extra=...)

    @model_validator(mode="after")
    def _consistent(self) -> Sidecar:
        if len(self.cost_profile.segment_flops) != self.num_nodes:
            raise ValueError(
                f"'cost_profile' has {len(self.cost_profile.segment_flops)} segments but num_nodes is {self.num_nodes}"
            )
        return self


def library_versions() -> dict[str, str]:
    import numpy
    import torch

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
    extra = dict(extra or {})
    known = {k: extra.pop(k) for k in list(extra) if k in Sidecar.model_fields and k != "extra"}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
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
        "heads": list(model.head_specs) or None,
        "train_config": train_config or {},
        "versions": library_versions(),
        **known,
        **({"extra": extra} if extra else {}),
    }
    # what is written must read back: check it before writing anything
    validate(Sidecar, json.loads(json.dumps(meta)), source=str(jpath), error=CheckpointError)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = wpath.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(wpath)
    jtmp = jpath.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps(meta, indent=2))
    jtmp.replace(jpath)
    return wpath.parent


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The validated sidecar as a dict (every key present; ``format_version`` 1 when the file has none)."""
    _, jpath = _paths(path)
    hint = f"expected a directory with {WEIGHTS} and {SIDECAR}"
    d = read_json(jpath, error=CheckpointError, what="checkpoint sidecar", hint=hint)
    d = require_table(d, source=str(jpath), error=CheckpointError, what="checkpoint sidecar")
    side = validate(Sidecar, d, source=str(jpath), error=CheckpointError, missing_fix=_FIX)
    if side.train_config:
        from .training.config import TrainConfig

        try:
            TrainConfig.from_dict(side.train_config, source=str(jpath), section=("train_config",))
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    return side.model_dump()


def _shapes_match(model: MultiExitNetwork, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return all(state[k].shape == v.shape for k, v in own.items() if k in state)


def _match_heads(model: MultiExitNetwork, state: dict[str, torch.Tensor], recorded: list[Any] | None) -> None:
    """Rebuild every exit head whose weights in ``state`` do not fit the head the builder made.

    The builder's default heads may change between versions; a checkpoint keeps the heads it was
    trained with: the specs it recorded (``heads``) or, for checkpoints written before they were
    recorded, the spec read off the weights' shapes (:func:`~distree.models.heads.head_spec_from_weights`).
    """
    import torch

    from .models.heads import build_head, head_spec_from_weights

    was = model.training
    model.eval()
    h = torch.zeros((1, *model.input_shape))
    for i in range(model.num_nodes):
        with torch.no_grad():
            h = model.segments[i](h)
        prefix = f"exits.{i}."
        theirs = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        mine = model.exits[i].state_dict()
        if theirs.keys() == mine.keys() and all(theirs[k].shape == v.shape for k, v in mine.items()):
            continue
        in_shape = tuple(int(s) for s in h.shape[1:])
        spec = recorded[i] if recorded and i < len(recorded) and recorded[i] else None
        spec = spec or head_spec_from_weights(theirs, in_shape)
        if spec is None:
            continue  # reported below as a mismatch
        model.exits[i] = build_head(spec, in_shape, model.num_classes)
        if len(model.head_specs) == model.num_nodes:
            model.head_specs[i] = dict(spec)
    model.train(was)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[MultiExitNetwork, dict[str, Any]]:
    """Rebuild the model from the sidecar and load its weights. Returns ``(model in eval mode, sidecar)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import resolve_model

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
    _match_heads(model, state, meta.get("heads"))
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
    model._cost = CostProfileTable.model_validate(meta["cost_profile"]).build()
    return model.eval(), meta
