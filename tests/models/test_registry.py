import pytest
import torch

from distree.models import create_model, list_models

# WRN at 32x32 RGB and 28x28 grayscale; every registered model at a tiny input.
SHAPES = {"small-cnn": [(1, 8, 8), (3, 16, 16)]}


def _shapes(name: str) -> list[tuple[int, int, int]]:
    return SHAPES.get(name, [(3, 32, 32), (1, 28, 28)])


def _cases():
    for name in list_models():
        for shape in _shapes(name):
            for nodes in (2, 4):
                yield pytest.param(name, shape, nodes, id=f"{name}-{'x'.join(map(str, shape))}-{nodes}n")


def _build(name, shape, nodes):
    c, h, _ = shape
    kw = {"in_channels": c, "input_size": h, "num_classes": 10}
    if name.startswith("wrn-28-10") or name.startswith("wrn-16-8"):
        kw["num_classes"] = 10
    return create_model(name, num_nodes=nodes, **kw)


def test_list_models_has_the_required_wrns():
    names = list_models()
    for n in ["wrn-16-1", "wrn-16-2", "wrn-16-4", "wrn-28-2", "wrn-28-10", "small-cnn"]:
        assert n in names
    assert list_models("wrn-16-*") == ["wrn-16-1", "wrn-16-2", "wrn-16-4", "wrn-16-8"]


@pytest.mark.parametrize("name,shape,nodes", list(_cases()))
def test_segments_in_sequence_equal_forward(name, shape, nodes):
    """Running node after node gives exactly the last exit of forward(), for every registered model."""
    torch.manual_seed(0)
    net = _build(name, shape, nodes).eval()
    assert net.num_nodes == nodes
    x = torch.randn(2, *shape)
    with torch.no_grad():
        outs = net(x)
        h = x
        for i in range(net.num_nodes):
            h, out = net.forward_segment(i, h)
            torch.testing.assert_close(out.logits, outs[i].logits)
            torch.testing.assert_close(out.features, outs[i].features)
    assert len(outs) == nodes
    assert outs[-1].logits.shape == (2, 10)


def test_unknown_model_names_the_alternatives():
    with pytest.raises(ValueError, match="unknown model 'wrn-99'.*wrn-16-2"):
        create_model("wrn-99")


def test_create_model_records_args_for_rebuild():
    net = create_model("small-cnn", num_nodes=3, num_classes=5, width=4)
    assert net.model_name == "small-cnn"
    assert net.model_args == {"num_nodes": 3, "num_classes": 5, "width": 4}


@pytest.mark.parametrize("name,nodes", [("wrn-16-2", 2), ("wrn-16-2", 3), ("wrn-16-2", 7), ("wrn-28-2", 8)])
def test_wrn_splits_into_2_to_8_nodes(name, nodes):
    net = create_model(name, num_nodes=nodes)
    cp = net.cost_profile()
    assert cp.num_nodes == nodes
    total = sum(cp.segment_flops)
    full = create_model(name, num_nodes=1).cost_profile()
    assert total == full.segment_flops[0]  # the split loses and duplicates nothing


def test_more_nodes_than_blocks_says_the_limit():
    # WRN-16 has a stem + 6 residual blocks: at most 7 nodes
    with pytest.raises(ValueError, match="cannot split 7 blocks over 8 nodes.*at most 7"):
        create_model("wrn-16-2", num_nodes=8)


def test_bad_wrn_depth_is_a_clear_error():
    from distree.models.wrn import build_wrn

    with pytest.raises(ValueError, match="6n\\+4"):
        build_wrn(17, 2)
