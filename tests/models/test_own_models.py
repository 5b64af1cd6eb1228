"""Models from the user's code: import paths, entry points, argument checking, clear errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from distree.models import (
    ModelError,
    MultiExitNetwork,
    create_model,
    list_models,
    parse_model_args,
    resolve_model,
)

USER_MODULE = """
import torch
from torch import nn

from distree import from_sequential


def vgg(num_nodes=3, *, num_classes=10, in_channels=1, input_size=8, width=1.0):
    w = max(1, int(8 * width))
    blocks = [nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.ReLU()),
              nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU())]
    return from_sequential(blocks, num_nodes, torch.zeros(2, in_channels, input_size, input_size),
                           num_classes=num_classes)


def fixed(num_nodes=2):
    return vgg(num_nodes, num_classes=4, in_channels=1, input_size=8)


def not_a_network(num_nodes=2):
    return nn.Sequential(nn.Linear(4, 4))


def no_nodes(width=1):
    return None


class Zoo:
    @staticmethod
    def tiny(num_nodes=2, num_classes=10):
        return vgg(num_nodes, num_classes=num_classes)
"""


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package ``usernets_<id>`` on sys.path (unique name: imports are cached per process)."""
    name = f"usernets_{tmp_path.name.replace('-', '_')}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_import_path_builds_and_records_where_it_came_from(user_pkg: str) -> None:
    net = create_model(f"{user_pkg}.models:vgg", num_nodes=3, num_classes=5, width=0.5)
    assert isinstance(net, MultiExitNetwork) and net.num_nodes == 3 and net.num_classes == 5
    assert net.model_name == f"{user_pkg}.models:vgg"
    assert net.builder_ref == f"{user_pkg}.models:vgg"
    assert net.model_args == {"num_nodes": 3, "num_classes": 5, "width": 0.5}
    # nested attributes work too
    assert create_model(f"{user_pkg}.models:Zoo.tiny", num_nodes=2).num_nodes == 2


def test_unknown_argument_lists_the_accepted_ones(user_pkg: str) -> None:
    with pytest.raises(
        ModelError, match=r"takes no argument 'depth'; it accepts: num_classes=10, in_channels=1.*width"
    ):
        create_model(f"{user_pkg}.models:vgg", num_nodes=2, depth=3)
    with pytest.raises(ModelError, match="num_nodes is not a model argument"):
        resolve_model(f"{user_pkg}.models:vgg").check_args({"num_nodes": 2})


def test_registered_wrn_declares_its_arguments() -> None:
    b = resolve_model("wrn-16-2")
    assert {"in_channels", "input_size", "num_classes", "head_budget", "dropout"} <= set(b.parameters)
    assert not b.takes_any
    with pytest.raises(ModelError, match="takes no argument 'width'.*head_budget"):
        create_model("wrn-16-2", num_nodes=2, width=3)


def test_missing_module_names_it_and_the_fix() -> None:
    with pytest.raises(
        ModelError, match=r"needs module 'no_such_pkg_x\.models'.*no module named 'no_such_pkg_x'.*PYTHONPATH"
    ):
        create_model("no_such_pkg_x.models:vgg")
    with pytest.raises(ModelError, match="must look like 'package.module:function'"):
        create_model("os:")


def test_missing_attribute_and_non_builders_are_clear(user_pkg: str) -> None:
    with pytest.raises(ModelError, match=f"module '{user_pkg}.models' has no attribute 'resnet'"):
        create_model(f"{user_pkg}.models:resnet")
    with pytest.raises(ModelError, match="returned a Sequential, not a MultiExitNetwork.*from_sequential"):
        create_model(f"{user_pkg}.models:not_a_network", num_nodes=2)
    with pytest.raises(ModelError, match="must take a 'num_nodes' argument"):
        create_model(f"{user_pkg}.models:no_nodes", num_nodes=2)


def test_a_broken_dependency_is_not_reported_as_the_users_module(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import missing_dependency_zz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="importing module 'needs_missing_dep'.*missing_dependency_zz"):
        create_model("needs_missing_dep:f")


def test_the_current_directory_is_searched_like_python_m(tmp_path: Path, monkeypatch) -> None:
    name = f"cwdnets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    net = create_model(f"{name}:fixed", num_nodes=2)
    assert net.num_classes == 4


def _entry_point_dist(root: Path, module: str, names: dict[str, str]) -> None:
    dist = root / "usermodels-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: usermodels\nVersion: 0.1\n")
    lines = "\n".join(f"{n} = {module}:{fn}" for n, fn in names.items())
    (dist / "entry_points.txt").write_text(f"[distree.models]\n{lines}\n")


def test_entry_point_models_are_listed_and_built(user_pkg: str, tmp_path: Path) -> None:
    _entry_point_dist(tmp_path, f"{user_pkg}.models", {"user-vgg": "vgg", "user-broken": "nothing_here"})
    assert {"user-vgg", "user-broken"} <= set(list_models())
    assert list_models("user-v*") == ["user-vgg"]
    b = resolve_model("user-vgg")
    assert b.origin == "entry point of usermodels" and b.ref == f"{user_pkg}.models:vgg"
    net = create_model("user-vgg", num_nodes=2, width=2.0)
    assert net.model_name == "user-vgg" and net.builder_ref == f"{user_pkg}.models:vgg"
    with pytest.raises(ModelError, match="loading model 'user-broken'.*usermodels"):
        resolve_model("user-broken")


def test_unknown_name_says_how_to_bring_your_own() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'vgg-8'; available: .*wrn-16-2.*package\.module:function"):
        create_model("vgg-8")


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"width": 0.5, "head": null}', {"width": 0.5, "head": None}),
        ("width=0.5,depth=8", {"width": 0.5, "depth": 8}),
        (["width=0.5", "name=vgg", "sizes=[1,2]"], {"width": 0.5, "name": "vgg", "sizes": [1, 2]}),
        ("sizes=[1, 2], flag=true", {"sizes": [1, 2], "flag": True}),
        (None, {}),
    ],
)
def test_parse_model_args(text, expected) -> None:
    assert parse_model_args(text) == expected


@pytest.mark.parametrize("bad", ["width", "{not json", "[1, 2]", "=3"])
def test_parse_model_args_rejects_malformed_input(bad: str) -> None:
    with pytest.raises(ModelError, match="model arguments"):
        parse_model_args(bad)


def test_a_builder_returning_the_wrong_node_count_is_caught(tmp_path: Path, monkeypatch) -> None:
    name = f"wrongnodes_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from distree.models import create_model
            def b(num_nodes=2):
                return create_model("small-cnn", num_nodes=3, width=4)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="asked for 2 nodes but built 3"):
        create_model(f"{name}:b", num_nodes=2)
