import json

import numpy as np
import pytest
import torch

from distree.checkpoint import CheckpointError, load_checkpoint, read_sidecar, save_checkpoint
from distree.data import load_split
from distree.models import create_model
from distree.training import TrainConfig, exit_accuracies, train

TINY = dict(model="small-cnn", num_nodes=3, dataset="synthetic", batch_size=32, lr=0.05, model_args={"width": 4})


def test_training_is_deterministic_on_cpu(tmp_path):
    a = train(TrainConfig(epochs=1, **TINY), tmp_path / "a")
    b = train(TrainConfig(epochs=1, **TINY), tmp_path / "b")
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, msg=ka)
    assert a.history[0]["train"]["loss"] == b.history[0]["train"]["loss"]


def test_resume_continues_exactly(tmp_path):
    cfg = TrainConfig(epochs=2, **TINY)
    full = train(cfg, tmp_path / "full")
    # an interruption after epoch 1: the epoch callback raises once the first epoch is checkpointed
    part_dir = tmp_path / "resume"
    interrupted = {"n": 0}

    class Stop(Exception):
        pass

    def stop_after_first(rec):
        interrupted["n"] += 1
        raise Stop

    with pytest.raises(Stop):
        train(cfg, part_dir, on_epoch=stop_after_first)
    assert interrupted["n"] == 1  # stopped right after the first epoch, before the second began
    assert [h["epoch"] for h in json.loads((part_dir / "history.json").read_text())] == [1]
    assert read_sidecar(part_dir)["epoch"] == 1
    first = json.loads((part_dir / "history.json").read_text())[0]
    ran: list[int] = []
    resumed = train(cfg, part_dir, resume=True, on_epoch=lambda rec: ran.append(rec["epoch"]))
    assert ran == [2]  # only the missing epoch ran
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.history[0] == first
    assert resumed.history[1]["train"]["loss"] == full.history[1]["train"]["loss"]
    for (k, va), (_, vb) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(TrainConfig(epochs=1, **TINY), tmp_path)
    with pytest.raises(ValueError, match="config differs"):
        train(TrainConfig(epochs=1, **{**TINY, "lr": 0.01}), tmp_path, resume=True)


def test_outputs_of_a_run(tmp_path):
    res = train(TrainConfig(epochs=1, objective="distree", **TINY), tmp_path)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert len(hist[0]["val_acc"]) == 3 and "kd" in hist[0]["train"] and "ft" in hist[0]["train"]
    side = read_sidecar(tmp_path)
    assert side["train_config"]["objective"] == "distree"
    assert side["cost_profile"]["segment_flops"] == res.model.cost_profile().segment_flops
    assert {"torch", "numpy", "distree", "python"} <= set(side["versions"])
    assert side["normalization"]["mean"] and side["classes"]


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    net = create_model("small-cnn", num_nodes=2, num_classes=3, width=4).eval()
    save_checkpoint(net, tmp_path, classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2]})
    back, side = load_checkpoint(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[-1].logits, net(x)[-1].logits)
    assert side["classes"] == ["a", "b", "c"] and side["input_shape"] == [1, 8, 8]
    # both file paths work too
    load_checkpoint(tmp_path / "model.safetensors")


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    net = create_model("small-cnn", num_nodes=2, num_classes=3, width=4)
    save_checkpoint(net, tmp_path, classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2]})
    w = tmp_path / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)
    save_checkpoint(net, tmp_path, classes=["a", "b", "c"], normalization={"mean": [0.5], "std": [0.2]})
    side = json.loads((tmp_path / "model.json").read_text())
    side["model_args"]["width"] = 8
    (tmp_path / "model.json").write_text(json.dumps(side))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint sidecar"):
        load_checkpoint(tmp_path / "missing")


def test_external_teacher_for_kd(tmp_path, tiny_checkpoint):
    cfg = TrainConfig(epochs=1, objective="ce+kd", teacher=str(tiny_checkpoint), **{**TINY, "num_nodes": 2})
    res = train(cfg, tmp_path)
    assert "kd" in res.history[0]["train"]


def test_exit_accuracies_match_manual_accuracy(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    ds = load_split("synthetic", "test")
    accs = exit_accuracies(model, ds, batch_size=7)  # batches that do not divide the split
    x = (ds.images.float() / 255.0 - torch.tensor(ds.mean).view(1, -1, 1, 1)) / torch.tensor(ds.std).view(1, -1, 1, 1)
    with torch.no_grad():
        outs = model.eval()(x)
    manual = [float((o.logits.argmax(-1) == ds.labels).double().mean()) for o in outs]
    assert len(accs) == 4
    np.testing.assert_allclose(accs, manual, atol=1e-12)
    assert len(set(np.round(manual, 6))) > 1  # the exits differ, so a mixed-up exit order would show
