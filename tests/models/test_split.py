import pytest
import torch
from torch import nn

from distree.models import create_model, from_sequential, partition_blocks


def test_partition_balances_flops():
    assert partition_blocks([1, 1, 1, 1], 2) == [0, 2]
    assert partition_blocks([4, 1, 1, 1, 1], 2) == [0, 1]
    assert partition_blocks([1, 1, 1, 1, 1, 1], 3) == [0, 2, 4]


def test_partition_follows_device_speeds():
    # node 2 is three times faster: it should take about 3/4 of the work
    starts = partition_blocks([1] * 8, 2, speeds=[1, 3])
    assert starts == [0, 2]


def test_partition_errors_name_the_fix():
    with pytest.raises(ValueError, match="cannot split 3 blocks over 4 nodes.*at most 3"):
        partition_blocks([1, 1, 1], 4)
    with pytest.raises(ValueError, match="speeds has 3 entries but there are 2 nodes"):
        partition_blocks([1, 1, 1], 2, speeds=[1, 1, 1])
    with pytest.raises(ValueError, match="positive"):
        partition_blocks([1, 1, 1], 2, speeds=[1, 0])


def _mlp_blocks():
    return [nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU()), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)]


def test_from_sequential_on_user_conv_backbone():
    blocks = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
    )
    net = from_sequential(blocks, 3, torch.randn(2, 3, 16, 16), num_classes=7)
    assert net.num_nodes == 3
    outs = net(torch.randn(4, 3, 16, 16))
    assert [o.logits.shape for o in outs] == [torch.Size([4, 7])] * 3
    cp = net.cost_profile()
    assert cp.hop_shapes[0][0] in (8, 16)  # sized from the real activation shapes


def test_from_sequential_on_vector_blocks():
    net = from_sequential(_mlp_blocks(), 2, torch.randn(2, 1, 4, 4), num_classes=3)
    outs = net(torch.randn(5, 1, 4, 4))
    assert outs[0].logits.shape == (5, 3)


def test_custom_head_factory():
    class Head(nn.Module):
        def __init__(self, c: int, spatial: int, k: int) -> None:
            super().__init__()
            self.fc = nn.Linear(c, k)
            self.feature_dim = c

        def forward(self, h):
            f = h.mean(dim=(2, 3))
            return self.fc(f), f

    blocks = [nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)]
    net = from_sequential(blocks, 2, torch.randn(2, 1, 8, 8), num_classes=2, head=Head)
    assert isinstance(net.exits[0], Head)


def test_from_sequential_errors():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="cannot split 2 blocks over 3 nodes"):
        from_sequential([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)], 3, x, num_classes=2)
    with pytest.raises(ValueError, match="speeds has 1 entries"):
        from_sequential([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)], 2, x, num_classes=2, speeds=[1.0])

    class Squash(nn.Module):
        def forward(self, h):
            return h.sum(dim=0, keepdim=True)

    with pytest.raises(ValueError, match="changed the batch size from 2 to 1"):
        from_sequential([nn.Conv2d(3, 3, 1), Squash()], 2, x, num_classes=2)
    with pytest.raises(ValueError, match="block 1 .*failed on input of shape"):
        from_sequential([nn.Conv2d(3, 4, 1), nn.Conv2d(3, 3, 1)], 2, x, num_classes=2)
    with pytest.raises(ValueError, match="batched tensor"):
        from_sequential([nn.Conv2d(3, 3, 1)], 1, torch.randn(3), num_classes=2)


def test_speeds_move_work_to_faster_nodes():
    even = create_model("wrn-16-2", num_nodes=2).cost_profile().segment_flops
    fast_second = create_model("wrn-16-2", num_nodes=2, speeds=[1.0, 4.0]).cost_profile().segment_flops
    assert fast_second[1] > even[1]
