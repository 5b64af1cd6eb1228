"""Exit heads sized to a cost budget: every default head within it, on every model."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from distree.models import (
    DEFAULT_HEAD,
    DEFAULT_HEAD_BUDGET,
    build_head,
    create_model,
    from_sequential,
    list_models,
    size_head,
)
from distree.models.heads import head_candidates, head_flops


def _cases():
    for name in list_models():
        for shape in [(3, 32, 32), (1, 28, 28)] if name != "small-cnn" else [(1, 8, 8), (3, 32, 32)]:
            yield pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("name,shape", list(_cases()))
def test_default_heads_are_within_the_budget_on_every_registry_model(name, shape):
    net = create_model(name, num_nodes=4, in_channels=shape[0], input_size=shape[1])
    cp = net.cost_profile()
    assert net.head_budget == DEFAULT_HEAD_BUDGET == 0.02
    shares = cp.head_share()
    assert all(0 < s <= DEFAULT_HEAD_BUDGET for s in shares), shares
    # the shares in the cost profile are the measured FLOPs of each head over its segment
    for i, s in enumerate(shares):
        assert s == pytest.approx(cp.exit_flops[i] / cp.segment_flops[i])


def test_wrn_16_2_keeps_the_measured_default_head_on_cifar_shapes():
    net = create_model("wrn-16-2", num_nodes=4)
    assert net.head_specs[:3] == [DEFAULT_HEAD] * 3 and net.head_specs[3] == {"kind": "linear"}
    assert max(net.cost_profile().head_share()) < 0.01


def _vgg(widths, in_ch=1):
    blocks, c = [], in_ch
    for i, w in enumerate(widths):
        blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1, stride=2 if i % 2 else 1), nn.ReLU()))
        c = w
    return blocks


def test_size_head_picks_the_first_candidate_that_fits():
    shape = (64, 14, 14)
    specs = head_candidates(shape)
    costs = [head_flops(build_head(s, shape, 10), shape) for s in specs]
    assert specs[0] == DEFAULT_HEAD and specs[-1] == {"kind": "linear"}
    assert [s["pool"] for s in specs[:-1]] == sorted((s["pool"] for s in specs[:-1]), reverse=True)  # grid first
    seg = 10_000_000
    spec, head, f = size_head(shape, 10, seg, 0.02)
    first = next(i for i, c in enumerate(costs) if c <= 0.02 * seg)
    assert spec == specs[first] and f == costs[first] == head_flops(head, shape)
    # a tight budget falls through to smaller grids and widths
    spec_small, _, f_small = size_head(shape, 10, seg, 0.002)
    assert f_small < f and f_small <= 0.002 * seg and spec_small["pool"] < spec["pool"]


def test_narrow_vgg_on_fashion_mnist_shape_gets_cheap_heads():
    """The case that cost 5-18% with the fixed 4x4/128 head: an 8-block VGG of width 16-64, 28x28."""
    torch.manual_seed(0)
    blocks = _vgg([16, 16, 32, 32, 64, 64, 64, 64])
    net = from_sequential(blocks, 4, torch.zeros(2, 1, 28, 28), num_classes=10)
    assert max(net.cost_profile().head_share()) <= 0.02
    fixed = from_sequential(
        _vgg([16, 16, 32, 32, 64, 64, 64, 64]), 4, torch.zeros(2, 1, 28, 28), num_classes=10, head=DEFAULT_HEAD
    )
    assert max(fixed.cost_profile().head_share()[:3]) > 0.02  # what the budget avoids


def test_auto_heads_start_from_the_same_random_state_as_the_chosen_spec():
    """Measuring candidates must not shift the network's initialisation: the heads are as if built directly."""
    torch.manual_seed(1)
    auto = from_sequential(_vgg([8, 16, 32, 32]), 4, torch.zeros(2, 1, 16, 16), num_classes=4, head_budget=0.05)
    torch.manual_seed(1)
    _vgg([8, 16, 32, 32])  # the same draws for the blocks
    h = torch.zeros(1, 1, 16, 16)
    for k in range(auto.num_nodes):
        h = auto.segments[k](h)
        spec = auto.head_specs[k] if k < auto.num_nodes - 1 else {"kind": "linear"}
        direct = build_head(spec, tuple(h.shape[1:]), 4)
        for a, b in zip(auto.exits[k].state_dict().values(), direct.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b)
    assert len({str(s) for s in auto.head_specs[:3]}) > 1  # several candidates were in play


def test_explicit_heads_are_kept_and_warned_about_when_over_budget(caplog):
    with caplog.at_level(logging.WARNING, logger="distree.models.multi_exit"):
        net = from_sequential(
            _vgg([8, 8, 16, 16]),
            4,
            torch.zeros(2, 1, 28, 28),
            num_classes=10,
            head={"kind": "conv", "pool": 8, "channels": 64, "hidden": 128},
        )
    assert all(s == {"kind": "conv", "pool": 8, "channels": 64, "hidden": 128} for s in net.head_specs[:3])
    assert "above the 2.0% head budget" in caplog.text
    none = from_sequential(_vgg([8, 8, 16, 16]), 4, torch.zeros(2, 1, 28, 28), num_classes=10, head_budget=None)
    assert none.head_specs[:3] == [DEFAULT_HEAD] * 3 and none.head_budget is None


def test_budget_is_validated_and_passed_through_create_model():
    with pytest.raises(ValueError, match="head_budget must be a positive fraction"):
        create_model("small-cnn", num_nodes=2, head_budget=0)
    loose = create_model("wrn-16-2", num_nodes=4, in_channels=1, input_size=8, head_budget=0.5)
    tight = create_model("wrn-16-2", num_nodes=4, in_channels=1, input_size=8, head_budget=0.005)
    assert max(tight.cost_profile().head_share()) <= 0.005 < max(loose.cost_profile().head_share())


def test_cheapest_head_over_budget_is_used_with_a_warning(caplog):
    blocks = [nn.Identity(), nn.Conv2d(4, 4, 1), nn.Identity()]
    with caplog.at_level(logging.WARNING, logger="distree.models.heads"):
        net = from_sequential(blocks, 3, torch.zeros(2, 4, 4, 4), num_classes=10, cut_points=[0, 1, 2])
    assert net.head_specs[0] == {"kind": "linear"}
    assert "the cheapest exit head" in caplog.text and "raise the head budget" in caplog.text
