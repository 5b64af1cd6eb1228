"""The shared schema layer: one-line messages from validation errors, and the error hierarchy."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest
from pydantic import Field, model_validator

from distree import errors
from distree._schema import FormatVersion, LocatedError, Schema, WholeInt, read_json, read_toml, validate


class _Node(Schema):
    address: str = Field(description="host:port of the node")
    segment: int = Field(1, ge=1)


class _Batching(Schema):
    max_batch_size: int = Field(1, ge=1)


class _File(Schema):
    format_version: FormatVersion = 1
    threads: int = 1
    mode: Literal["a", "b"] = "a"
    rate: float = Field(1.0, gt=0)
    count: WholeInt = 1
    nodes: list[_Node] = Field(min_length=1)
    batching: _Batching = Field(default_factory=_Batching)
    thresholds: list[float | None] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> _File:
        if self.threads == 7:
            raise ValueError("threads and mode disagree")
        if self.threads == 8:
            raise LocatedError("must not be used with threads = 8", ("nodes", 0, "segment"))
        return self


def _msg(data: dict, source: str = "c.toml") -> str:
    with pytest.raises(errors.SpecError) as ei:
        validate(_File, data, source=source, error=errors.SpecError, missing_fix="see the docs")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{source}: "), msg
    return msg


NODE = [{"address": "127.0.0.1:1"}]


@pytest.mark.parametrize(
    "data,expected",
    [
        (
            {"nodes": NODE, "thraeds": 1},
            "c.toml: unknown key 'thraeds' (allowed: batching, count, format_version, mode, nodes, rate, threads, "
            "thresholds; did you mean 'threads'?)",
        ),
        (
            {"nodes": [{"address": "127.0.0.1:1", "sgment": 2}]},
            "c.toml: [[nodes]] #1 unknown key 'sgment' (allowed: address,",
        ),
        ({"nodes": [{}]}, "c.toml: [[nodes]] #1 missing key 'address' (host:port of the node; see the docs)"),
        ({}, "c.toml: missing key 'nodes' (see the docs)"),
        ({"nodes": []}, "c.toml: 'nodes' needs at least 1 entry, got 0"),
        ({"nodes": NODE, "batching": {"max_batch_size": 0}}, "c.toml: [batching] 'max_batch_size' must be >= 1, got 0"),
        ({"nodes": NODE, "batching": 3}, "c.toml: 'batching' must be a table, got 3"),
        ({"nodes": NODE, "threads": "two"}, "c.toml: 'threads' must be an integer, got 'two'"),
        ({"nodes": NODE, "threads": True}, "c.toml: 'threads' must be an integer, got True"),
        ({"nodes": NODE, "threads": 2.0}, "c.toml: 'threads' must be an integer, got 2.0"),
        ({"nodes": NODE, "rate": "fast"}, "c.toml: 'rate' must be a number, got 'fast'"),
        ({"nodes": NODE, "rate": float("inf")}, "c.toml: 'rate' must be a finite number, got inf"),
        ({"nodes": NODE, "mode": "c"}, "c.toml: 'mode' must be 'a' or 'b', got 'c'"),
        ({"nodes": NODE, "count": 1.5}, "c.toml: 'count' must be an integer, got 1.5"),
        ({"nodes": NODE, "thresholds": [1.0, "x"]}, "c.toml: 'thresholds[1]' must be a number, got 'x'"),
        ({"nodes": NODE, "threads": 7}, "c.toml: threads and mode disagree"),
        ({"nodes": NODE, "threads": 8}, "c.toml: [[nodes]] #1 'segment' must not be used with threads = 8"),
        ({"nodes": NODE, "format_version": 2}, "c.toml: 'format_version' is 2, newer than this distree reads (1)"),
        ({"nodes": NODE, "format_version": 0}, "c.toml: 'format_version' must be 1, got 0"),
    ],
)
def test_one_line_names_file_section_key_and_fix(data, expected):
    assert _msg(data).startswith(expected)


def test_valid_data_and_defaults():
    f = validate(_File, {"nodes": NODE, "count": 1e3, "rate": 2}, source="c.toml", error=errors.SpecError)
    assert f.count == 1000 and isinstance(f.count, int) and f.rate == 2.0 and f.format_version == 1


def test_json_files_say_object_and_prefix_locations():
    msg = _msg({"nodes": NODE, "batching": []}, source="p.json")
    assert msg == "p.json: 'batching' must be an object, got []"
    with pytest.raises(errors.PolicyError) as ei:
        validate(_Batching, {"max_batch_size": "x"}, source="p.json", error=errors.PolicyError, loc_prefix=("params",))
    assert str(ei.value) == "p.json: [params] 'max_batch_size' must be an integer, got 'x'"
    with pytest.raises(errors.PolicyError) as ei:
        validate(_Batching, {"max_bach": 1}, source="policy 'x'", error=errors.PolicyError, noun="parameter")
    assert (
        str(ei.value)
        == "policy 'x': unknown parameter 'max_bach' (allowed: max_batch_size; did you mean 'max_batch_size'?)"
    )


def test_reading_files(tmp_path):
    with pytest.raises(errors.ScenarioError, match=r"^no scenario at .*nope.toml; see the examples$"):
        read_toml(tmp_path / "nope.toml", error=errors.ScenarioError, what="scenario", hint="see the examples")
    (tmp_path / "bad.toml").write_text("a = [\n")
    with pytest.raises(errors.ScenarioError) as ei:
        read_toml(tmp_path / "bad.toml", error=errors.ScenarioError, what="scenario", hint="")
    assert "bad.toml is not valid TOML" in str(ei.value) and "\n" not in str(ei.value)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(errors.PolicyError, match="policy file .*bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json", error=errors.PolicyError, what="policy file", hint="")


def test_error_hierarchy_keeps_the_old_bases():
    for cls in (errors.SpecError, errors.ScenarioError, errors.ProfileError, errors.PolicyError, errors.ConfigError):
        assert issubclass(cls, errors.DistreeError) and issubclass(cls, ValueError)
    for cls in (errors.CheckpointError, errors.TraceError, errors.DatasetError):
        assert issubclass(cls, errors.DistreeError) and issubclass(cls, RuntimeError)
    assert issubclass(errors.ProfileError, errors.ScenarioError)
    # the classes the areas used to define are these ones
    from distree.checkpoint import CheckpointError
    from distree.data import DatasetError
    from distree.policies.registry import PolicyFileNotFound
    from distree.runtime import SpecError
    from distree.sim import ScenarioError
    from distree.trace import TraceError
    from distree.training.config import ConfigError

    assert (CheckpointError, DatasetError, SpecError, ScenarioError, TraceError, ConfigError) == (
        errors.CheckpointError,
        errors.DatasetError,
        errors.SpecError,
        errors.ScenarioError,
        errors.TraceError,
        errors.ConfigError,
    )
    assert issubclass(PolicyFileNotFound, errors.PolicyError) and issubclass(PolicyFileNotFound, FileNotFoundError)


# distree/__init__ imports the checkpoint module (torch); load the package without running it
_ISOLATED = """
import importlib.util, sys, types
spec = importlib.util.find_spec("distree")
pkg = types.ModuleType("distree")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["distree"] = pkg
import distree.errors, distree._schema
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def test_schema_modules_do_not_import_torch():
    out = subprocess.run([sys.executable, "-c", _ISOLATED], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
