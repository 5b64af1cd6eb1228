"""The default policy and every deployable one calibrate and evaluate on any model's trace.

Traces come from untrained networks on the tiny synthetic dataset: every registry model and three
``from_sequential`` networks whose exits have unequal feature widths. Untrained outputs are fine:
what is tested is that nothing depends on the feature widths matching.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distree.calibration import calibrate
from distree.data import load_split
from distree.evaluation.scoring import evaluate_policy, score_trace
from distree.models import create_model, from_sequential, list_models
from distree.models.heads import VectorHead
from distree.policies import DEFAULT_POLICY, create_default_policy, create_policy, list_policies
from distree.trace import record_trace


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU())


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _vgg_auto() -> nn.Module:
    """Widening VGG, default (budget-sized) heads: different pools and MLP widths per exit."""
    blocks = [_conv(1, 8), _conv(8, 16), _conv(16, 32, 2), _conv(32, 64), _conv(64, 96, 2), _conv(96, 128)]
    return from_sequential(blocks, 4, torch.zeros(2, 1, 8, 8), num_classes=4)


def _vgg_factory_heads() -> nn.Module:
    """Heads from a factory whose feature width is the segment's channel count (8, 24, 48, 96)."""

    class ChannelHead(nn.Module):
        def __init__(self, c: int, k: int) -> None:
            super().__init__()
            self.fc = nn.Linear(c, k)
            self.feature_dim = c

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = h.mean(dim=(2, 3))
            return self.fc(f), f

    blocks = [_conv(1, 8), _conv(8, 24, 2), _conv(24, 48), _conv(48, 96)]
    return from_sequential(
        blocks,
        4,
        torch.zeros(2, 1, 8, 8),
        num_classes=4,
        head=lambda c, s, k: ChannelHead(c, k),
        final_head=lambda c, s, k: ChannelHead(c, k),
        cut_points=[0, 1, 2, 3],
    )


def _mlp() -> nn.Module:
    """An MLP backbone on flat vectors, narrowing 64 → 32 → 16, linear heads (features = block width)."""
    blocks = [
        nn.Sequential(_Flatten(), nn.Linear(64, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 16), nn.ReLU()),
    ]
    head = {"kind": "pool", "hidden": None}
    return from_sequential(blocks, 3, torch.zeros(2, 1, 8, 8), num_classes=4, head=head, final_head=head)


SEQUENTIAL = {"vgg-auto-heads": _vgg_auto, "vgg-factory-heads": _vgg_factory_heads, "mlp-narrowing": _mlp}
POLICIES = [DEFAULT_POLICY, *list_policies(deployable_only=True)]


@pytest.fixture(scope="module")
def data():
    return load_split("synthetic", "val"), load_split("synthetic", "test")


def _traces(net: nn.Module, data) -> tuple:
    torch.manual_seed(0)
    val, test = data
    return record_trace(net, val, batch_size=64), record_trace(net, test, batch_size=64)


def _check_all_policies(val, test) -> None:
    for name in dict.fromkeys(POLICIES):
        pol = create_default_policy(val.num_nodes) if name == DEFAULT_POLICY else create_policy(name, val.num_nodes)
        cal = calibrate(pol, val, max_drop_pp=1.0)
        m = evaluate_policy(cal, test)
        assert 0.0 <= m.accuracy <= 1.0 and np.isfinite(m.saving), (name, m)
        assert abs(sum(m.exit_hist) - 1.0) < 1e-9, (name, m.exit_hist)
        assert cal.calibration["validation"]["drop_pp"] <= 1.0 + 1e-9, name
    # the default policy really uses the features: its score is not the bare confidence
    pol = create_default_policy(val.num_nodes)
    conf = create_policy("confidence", val.num_nodes)
    diff = score_trace(conf, val)[:, 1:] - score_trace(pol, val)[:, 1:]
    assert (diff >= -1e-9).all() and (diff > 1e-6).mean() > 0.5


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model(name, data):
    torch.manual_seed(0)
    net = create_model(name, num_nodes=4, in_channels=1, input_size=8, num_classes=4).eval()
    val, test = _traces(net, data)
    _check_all_policies(val, test)


@pytest.mark.parametrize("name", list(SEQUENTIAL))
def test_from_sequential_networks_with_unequal_widths(name, data):
    torch.manual_seed(0)
    net = SEQUENTIAL[name]().eval()
    val, test = _traces(net, data)
    widths = [f.shape[1] for f in val.features]
    assert len(set(widths)) > 1, widths  # the point of these networks
    _check_all_policies(val, test)


def test_the_mlp_backbone_uses_vector_heads():
    assert all(isinstance(e, VectorHead) for e in _mlp().exits)
