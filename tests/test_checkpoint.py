"""The checkpoint sidecar (model.json): validated on write and on read, one-line errors, old files load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distree.checkpoint import CheckpointError, load_checkpoint, read_sidecar, save_checkpoint
from distree.models import create_model


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = create_model("small-cnn", num_nodes=2, num_classes=3, width=4)
    return save_checkpoint(net, tmp_path / "ck", classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2]})


def _sidecar(ckpt: Path) -> dict:
    return json.loads((ckpt / "model.json").read_text())


def _error(ckpt: Path, data: dict) -> str:
    (ckpt / "model.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(ckpt)
    msg = str(ei.value)
    prefix = f"{ckpt / 'model.json'}: "
    assert msg.startswith(prefix) and "\n" not in msg, msg
    return msg[len(prefix) :]


def test_bad_sidecars(ckpt):
    good = _sidecar(ckpt)
    assert good["format_version"] == 1
    msg = _error(ckpt, {**good, "epochs": 3})
    assert msg.startswith("unknown key 'epochs' (allowed: builder, classes, cost_profile,"), msg
    assert "did you mean 'epoch'?" in _error(ckpt, {**good, "epochs": 3})
    assert _error(ckpt, {**good, "num_classes": "3"}) == "'num_classes' must be an integer, got '3'"
    assert _error(ckpt, {**good, "num_nodes": 0}) == "'num_nodes' must be >= 1, got 0"
    assert _error(ckpt, {k: v for k, v in good.items() if k != "model"}) == (
        "missing key 'model' (the registered model name (see `distree models`); "
        "the checkpoint is incomplete; train it again with `distree train`)"
    )
    norm = {**good, "normalization": {"mean": [0.5], "std": [0.0]}}
    assert _error(ckpt, norm) == "[normalization] 'std' must be > 0 for every channel, got [0.0]"
    cost = {**good, "cost_profile": {**good["cost_profile"], "hop_bytes": "many"}}
    assert _error(ckpt, cost) == "[cost_profile] 'hop_bytes' must be a list, got 'many'"
    cost = {**good, "cost_profile": {**good["cost_profile"], "segment_flops": [1, -5]}}
    assert _error(ckpt, cost) == "[cost_profile] 'segment_flops[1]' must be >= 0, got -5"
    tc = {**good, "train_config": {"epochs": 0}}
    assert _error(ckpt, tc) == "[train_config] 'epochs' must be >= 1, got 0"
    assert _error(ckpt, {**good, "format": "distree-policy/1"}) == (
        "'format' must be 'distree-checkpoint/1', got 'distree-policy/1'"
    )
    assert _error(ckpt, {**good, "format_version": 9}).startswith("'format_version' is 9, newer than this distree")


def test_sidecar_from_the_old_writer_loads(ckpt):
    """A sidecar written before format_version existed (the same keys, no version) is version 1."""
    old = _sidecar(ckpt)
    del old["format_version"]
    old["train_config"] = {"objective": "distree", "num_nodes": 2, "dataset": "synthetic", "epochs": 1}
    old.update({"epoch": 1, "val_acc": [0.5, 0.6], "dataset": "synthetic"})  # what the trainer adds
    (ckpt / "model.json").write_text(json.dumps(old))
    model, side = load_checkpoint(ckpt)
    assert side["format_version"] == 1 and side["epoch"] == 1 and side["dataset"] == "synthetic"
    assert model.num_nodes == 2 and side["train_config"]["objective"] == "distree"


def test_extra_keys_are_kept_in_their_own_table(tmp_path):
    net = create_model("small-cnn", num_nodes=2, num_classes=3, width=4)
    extra = {"epoch": 2, "dataset": "digits", "note": "baseline"}
    save_checkpoint(net, tmp_path, classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2]}, extra=extra)
    side = read_sidecar(tmp_path)
    assert side["epoch"] == 2 and side["dataset"] == "digits" and side["extra"] == {"note": "baseline"}


def test_a_sidecar_that_would_not_read_back_is_refused_on_write(tmp_path):
    net = create_model("small-cnn", num_nodes=2, num_classes=3, width=4)
    with pytest.raises(CheckpointError, match=r"\[normalization\] 'mean' has 1 channels but 'std' has 2"):
        save_checkpoint(net, tmp_path, classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2, 0.3]})
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "model.json").exists()


@pytest.mark.parametrize(
    ("model", "args", "old_head"),
    [
        # the default heads before they were sized to a budget
        ("small-cnn", {"num_classes": 3, "width": 4}, {"kind": "pool", "pool": 1, "hidden": 64}),
        ("wrn-10-1", {"num_classes": 3, "in_channels": 1, "input_size": 8}, {"kind": "pool", "pool": 4, "hidden": 128}),
    ],
)
def test_checkpoints_keep_the_heads_they_were_trained_with(tmp_path, model, args, old_head):
    """A checkpoint written before head specs were recorded (and whose heads are no longer the
    builder's default) loads with its own heads, read off the weights; new ones record them."""
    torch.manual_seed(0)
    net = create_model(model, num_nodes=3, head=old_head, **args).eval()
    ck = save_checkpoint(net, tmp_path / "ck", classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2]})
    side = _sidecar(ck)
    assert side["heads"][0] == old_head
    x = torch.randn(4, *net.input_shape)
    want = [o.logits for o in net(x)]
    # as the old writer left it: no recorded heads, no head argument
    side.pop("heads")
    side["model_args"].pop("head", None)
    (ck / "model.json").write_text(json.dumps(side))
    assert create_model(model, num_nodes=3, **args).head_specs[0] != old_head  # the default moved on
    back, _ = load_checkpoint(ck)
    assert back.head_specs[0] == old_head
    for a, b in zip(want, [o.logits for o in back(x)], strict=True):
        torch.testing.assert_close(a, b)
