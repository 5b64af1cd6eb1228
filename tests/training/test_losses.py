import math

import pytest
import torch

from distree.training import cross_entropy_terms, distree_loss, feature_transfer_loss, kd_loss


def test_cross_entropy_terms_by_hand():
    # uniform logits over 2 classes: CE = ln 2 at each exit
    lg = [torch.zeros(3, 2), torch.zeros(3, 2)]
    y = torch.tensor([0, 1, 0])
    assert cross_entropy_terms(lg, y, [1.0, 0.5]).item() == pytest.approx(1.5 * math.log(2))


def test_kd_loss_by_hand():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probs (3/4, 1/4) at T = 1
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-5)
    # T^2 scaling: at T = 2 the teacher is softened to ratio sqrt(3)
    p = math.sqrt(3) / (1 + math.sqrt(3))
    expected2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert kd_loss(s, t, 2.0).item() == pytest.approx(expected2, rel=1e-5)
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_transfer_by_hand_and_stop_gradient():
    s = torch.tensor([[1.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0]], requires_grad=True)
    loss = feature_transfer_loss(s, t)
    assert loss.item() == pytest.approx(1.0)  # orthogonal: 1 - cos = 1
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_teacher_side_gets_no_gradient_from_kd():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert t.grad is None


def test_distree_loss_combines_terms():
    torch.manual_seed(0)
    lg = [torch.randn(4, 3) for _ in range(3)]
    ft = [torch.randn(4, 5) for _ in range(3)]
    y = torch.tensor([0, 1, 2, 0])
    proj = [torch.nn.Identity(), torch.nn.Identity()]
    total, parts = distree_loss(
        lg, ft, y, ce_weights=[1, 1, 1], kd_weight=0.5, temperature=2.0, ft_weight=2.0, projections=proj
    )
    assert total.item() == pytest.approx((parts["ce"] + 0.5 * parts["kd"] + 2.0 * parts["ft"]).item(), rel=1e-6)
    assert set(parts) >= {"ce", "kd", "ft", "ce/0", "ce/2"}
    ce_only, parts = distree_loss(lg, ft, y, ce_weights=[1, 1, 1])
    assert "kd" not in parts and "ft" not in parts
    with pytest.raises(ValueError, match="one projection head per exit"):
        distree_loss(lg, ft, y, ce_weights=[1, 1, 1], ft_weight=1.0, projections=None)
