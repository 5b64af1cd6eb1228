import json

import pytest

from distree.errors import ConfigError
from distree.training import TrainConfig


def test_presets_fill_weights():
    assert (TrainConfig(objective="ce").kd_weight, TrainConfig(objective="ce").ft_weight) == (0.0, 0.0)
    assert TrainConfig(objective="ce+kd").kd_weight > 0 and TrainConfig(objective="ce+kd").ft_weight == 0
    c = TrainConfig(objective="distree")
    assert c.kd_weight > 0 and c.ft_weight > 0
    assert TrainConfig(objective="distree", ft_weight=0.25).ft_weight == 0.25


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"objective": "kd"}, "'objective' must be 'ce', 'ce+kd' or 'distree', got 'kd'"),
        ({"epochs": 0}, "'epochs' must be >= 1, got 0"),
        ({"optimizer": "rmsprop"}, "'optimizer' must be 'sgd' or 'adamw'"),
        ({"schedule": "step"}, "'schedule' must be 'cosine', 'onecycle' or 'constant'"),
        ({"ce_weights": [1.0]}, "'ce_weights' needs one weight per node (4), got 1"),
        ({"label_smoothing": 1.5}, "'label_smoothing' must be < 1"),
        ({"lr": 0}, "'lr' must be > 0"),
        ({"epochs": "3"}, "'epochs' must be an integer, got '3'"),
        ({"bogus": 1}, "unknown key 'bogus' (allowed: amp, batch_size,"),
    ],
)
def test_validation_messages(kwargs, match):
    with pytest.raises(ConfigError) as ei:
        TrainConfig(**kwargs)
    msg = str(ei.value)
    assert msg.startswith("training config: ") and match in msg and "\n" not in msg
    assert isinstance(ei.value, ValueError)  # callers that caught ValueError still do


def test_round_trip(tmp_path):
    c = TrainConfig(objective="ce+kd", head={"kind": "pool", "pool": 2})
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        TrainConfig.from_dict({**c.to_dict(), "bogus": 1})
    path = c.save(tmp_path / "train_config.json")
    assert json.loads(path.read_text())["format_version"] == 1
    assert TrainConfig.load(path) == c


def test_saved_config_errors_name_the_file(tmp_path):
    c = TrainConfig(objective="ce+kd")
    f = tmp_path / "train_config.json"
    # a file written before format_version existed (the dataclass's asdict) loads as version 1
    f.write_text(json.dumps(c.to_dict()))
    assert TrainConfig.load(f) == c
    cases = {
        "unknown key": ({**c.to_dict(), "epoch": 3}, "unknown key 'epoch' (allowed: amp,"),
        "wrong type": ({**c.to_dict(), "batch_size": "big"}, "'batch_size' must be an integer, got 'big'"),
        "out of range": ({**c.to_dict(), "val_fraction": 1.5}, "'val_fraction' must be < 1"),
        "missing (a null)": ({**c.to_dict(), "epochs": None}, "'epochs' must be an integer, got None"),
        "newer version": ({**c.to_dict(), "format_version": 2}, "'format_version' is 2, but this distree reads 1"),
    }
    for name, (data, needle) in cases.items():
        f.write_text(json.dumps(data))
        with pytest.raises(ConfigError) as ei:
            TrainConfig.load(f)
        msg = str(ei.value)
        assert msg.startswith(f"{f}: ") and needle in msg and "\n" not in msg, (name, msg)
    f.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.load(f)
