import pytest

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
        ({"objective": "kd"}, "unknown objective 'kd'"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"optimizer": "rmsprop"}, "optimizer must be"),
        ({"schedule": "step"}, "schedule must be"),
        ({"ce_weights": [1.0]}, "ce_weights needs one weight per node"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"lr": 0}, "lr must be > 0"),
    ],
)
def test_validation_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_round_trip():
    c = TrainConfig(objective="ce+kd", head={"kind": "pool", "pool": 2})
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown training config keys: bogus"):
        TrainConfig.from_dict({**c.to_dict(), "bogus": 1})
