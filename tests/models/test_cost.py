import numpy as np
import pytest
import torch
from torch import nn

from distree.models import CostProfile, create_model, from_sequential
from distree.models.heads import ExitHead, build_head


def test_cost_profile_counts_conv_flops_with_flopcounter():
    # one 3x3 conv 1->2 channels on 4x4 (padding 1): 2 * (2*4*4) * (1*3*3) = 576 FLOPs
    blocks = [nn.Conv2d(1, 2, 3, padding=1, bias=False)]
    net = from_sequential(blocks, 1, torch.zeros(2, 1, 4, 4), num_classes=3, final_head={"kind": "linear"})
    cp = net.cost_profile()
    assert cp.segment_flops == [576]
    assert cp.exit_flops == [2 * 2 * 3]  # Linear(2 -> 3) after global pooling
    assert cp.hop_bytes == []
    assert cp.input_bytes == 1 * 4 * 4 * 4


def test_hop_bytes_are_float32_activation_sizes():
    net = create_model("wrn-16-2", num_nodes=4)
    cp = net.cost_profile()
    assert cp.hop_bytes == [int(np.prod(s)) * 4 for s in cp.hop_shapes]
    assert cp.hop_shapes[0] == [32, 32, 32]


def test_exit_cost_accounting():
    cp = CostProfile(segment_flops=[10, 20, 30], exit_flops=[1, 2, 3], hop_bytes=[100, 50])
    np.testing.assert_array_equal(cp.exit_cost(), [11, 33, 66])
    assert cp.last_exit_cost() == 63  # all segments, only the final head
    np.testing.assert_array_equal(cp.bytes_to_exit(), [0, 100, 150])
    assert CostProfile.from_dict(cp.to_dict()) == cp


def test_cost_profile_validation():
    with pytest.raises(ValueError, match="hop_bytes must have num_nodes-1=1"):
        CostProfile(segment_flops=[1, 2], exit_flops=[1, 1], hop_bytes=[])


def test_default_head_is_a_few_percent_of_segment_flops():
    cp = create_model("wrn-16-2", num_nodes=4).cost_profile()
    for i in range(3):
        assert cp.exit_flops[i] / cp.segment_flops[i] < 0.03


def test_head_specs():
    assert build_head({"kind": "conv", "pool": 8, "channels": 16}, (32, 32, 32), 10).conv is not None
    h = build_head({"kind": "pool", "pool": 4, "hidden": 64}, (32, 2, 2), 10)
    assert isinstance(h, ExitHead) and h.pool == 2  # clipped to the activation size
    with pytest.raises(ValueError, match="unknown exit-head kind"):
        build_head({"kind": "nope"}, (3, 4, 4), 2)
