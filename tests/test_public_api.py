"""The public API and the layer rules: lazy imports, ``__all__``, which package may import which."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import distree

SRC = Path(distree.__file__).resolve().parent
PACKAGES = [
    "backends",
    "calibration",
    "data",
    "deploy",
    "evaluation",
    "models",
    "netem",
    "policies",
    "runtime",
    "sim",
    "trace",
    "training",
]


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def _loaded_after(code: str) -> list[str]:
    """Modules in ``sys.modules`` of a fresh interpreter after running ``code``."""
    res = _python(code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_policies_sim_and_calibration_import_no_torch():
    mods = _loaded_after("import distree, distree.policies, distree.sim, distree.calibration, distree.evaluation")
    assert "torch" not in mods
    assert "distree.policies" in mods and "distree.sim" in mods and "distree.calibration" in mods  # really imported


def test_lazy_names_import_torch_only_when_used():
    mods = _loaded_after("import distree\nassert distree.create_policy('confidence', 2).num_nodes == 2")
    assert "torch" not in mods
    mods = _loaded_after("import distree\nassert 'wrn-16-2' in distree.list_models()")
    assert "torch" in mods


def test_cli_help_imports_no_torch():
    code = (
        "import runpy, sys\nsys.argv = ['distree', '--help']\n"
        "try:\n    runpy.run_module('distree', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code == 0\n"
    )
    mods = _loaded_after(code)
    assert "distree.cli" in mods
    heavy = [m for m in ("torch", "numpy", "grpc", "scipy", "matplotlib") if m in mods]
    assert not heavy, f"`distree --help` imported {heavy}"


def test_cli_help_lists_every_command():
    res = subprocess.run([sys.executable, "-m", "distree", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for cmd in ("train", "trace", "calibrate", "evaluate", "simulate", "serve", "cluster", "deploy", "demo", "netem"):
        assert cmd in res.stdout, cmd


def test_version():
    res = subprocess.run([sys.executable, "-m", "distree", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"distree {distree.__version__}"
    assert distree.__version__ == importlib.metadata.version("distree")


def test_every_public_name_resolves():
    for name in distree.__all__:
        assert getattr(distree, name) is not None, name
    assert "create_model" in dir(distree) and "sim" in dir(distree)
    assert distree.sim is importlib.import_module("distree.sim")
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = distree.nonexistent
    for pkg in PACKAGES:
        mod = importlib.import_module(f"distree.{pkg}")
        assert mod.__doc__ and mod.__all__, pkg
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, (pkg, missing)
        assert len(set(mod.__all__)) == len(mod.__all__), pkg


def test_the_same_object_behind_both_paths():
    from distree.models import create_model
    from distree.policies import exit_nodes
    from distree.policies.thresholds import exit_nodes as deep

    assert distree.exit_nodes is exit_nodes is deep
    assert distree.create_model is create_model


def _imports(path: Path) -> set[str]:
    """Every ``distree`` module a source file imports (relative imports resolved; function-level ones too)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    pkg = list(rel.parts)[:-1]  # the package a relative import starts from (a module's or an __init__'s)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "distree"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.add(mod)
                if not node.module:
                    out |= {f"{mod}.{a.name}" for a in node.names}
            elif node.module and node.module.split(".")[0] == "distree":
                out.add(node.module)
    return out


def _package_imports(pkg: str) -> dict[str, set[str]]:
    root = SRC / pkg
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    return {str(f.relative_to(SRC)): _imports(f) for f in files}


# package -> distree packages it must never import (docs/architecture.md, "Layer rules")
FORBIDDEN = {
    "policies": {
        "models",
        "data",
        "trace",
        "training",
        "checkpoint",
        "calibration",
        "evaluation",
        "sim",
        "runtime",
        "netem",
        "cli",
        "fluctuation",
    },
    "models": {
        "data",
        "trace",
        "training",
        "checkpoint",
        "policies",
        "calibration",
        "evaluation",
        "sim",
        "runtime",
        "netem",
        "cli",
    },
    "fluctuation": {
        "models",
        "data",
        "trace",
        "training",
        "checkpoint",
        "policies",
        "calibration",
        "evaluation",
        "sim",
        "runtime",
        "netem",
        "cli",
    },
    "calibration": {"evaluation", "training", "data", "checkpoint", "sim", "runtime", "netem", "cli"},
    "evaluation": {"training", "data", "checkpoint", "sim", "runtime", "netem", "cli"},
    "sim": {"training", "data", "evaluation", "calibration", "runtime", "netem", "cli"},
    "runtime": {"training", "evaluation", "calibration", "sim", "netem", "cli", "deploy"},
    "deploy": {"training", "evaluation", "calibration", "sim", "netem", "cli", "models", "data"},
    "backends": {"training", "calibration", "evaluation", "sim", "runtime", "netem", "cli"},
    "trace": {"training", "calibration", "evaluation", "sim", "runtime", "netem", "cli", "policies"},
    "training": {"calibration", "evaluation", "sim", "runtime", "netem", "cli", "trace", "policies"},
    "netem": {
        "models",
        "data",
        "trace",
        "training",
        "checkpoint",
        "policies",
        "calibration",
        "evaluation",
        "sim",
        "runtime",
        "cli",
    },
}


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_layer_rules(pkg):
    bad = []
    for f, mods in _package_imports(pkg).items():
        for m in mods:
            parts = m.split(".")
            if len(parts) > 1 and parts[1] in FORBIDDEN[pkg]:
                bad.append(f"{f} imports {m}")
    assert not bad, "\n".join(bad)


def test_import_walker_sees_relative_and_function_level_imports():
    mods = _imports(SRC / "calibration" / "api.py")
    assert {"distree.policies.thresholds", "distree.calibration.search", "distree.trace.format"} <= mods
    assert "distree.checkpoint" in _imports(SRC / "sim" / "profile.py")  # imported inside a function


def test_runtime_and_sim_load_nothing_from_training():
    code = (
        "import importlib, pkgutil\nimport distree.runtime, distree.sim\n"
        "for pkg in (distree.runtime, distree.sim):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
    )
    mods = _loaded_after(code)
    assert "distree.runtime.kserve" in mods and "distree.sim.vector" in mods
    assert not [m for m in mods if m.startswith("distree.training")]


def test_runtime_files_stay_small():
    """Every module of the runtime (not the generated protos) stays at most 350 lines: one job per module."""
    big = {}
    for f in sorted((SRC / "runtime").glob("*.py")):
        n = len(f.read_text().splitlines())
        if n > 350:
            big[f.name] = n
    assert not big, "runtime modules over 350 lines: " + ", ".join(f"{name} ({n} lines)" for name, n in big.items())
