"""Every committed checkpoint loads, runs, has a model-card section that states its final validation
accuracy, and ships policy files calibrated on its own trace."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
COMMITTED = sorted(p.name for p in ROOT.iterdir() if (p / "model.json").is_file())


def _card_section(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^## `{re.escape(name)}`\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"checkpoints/README.md has no '## `{name}`' section: add a model card for it"
    return m.group(1)


def test_there_are_committed_checkpoints():
    assert "wrn16-1-cifar10-distree" in COMMITTED


@pytest.mark.parametrize("name", COMMITTED)
def test_a_committed_checkpoint_loads_runs_and_its_card_states_its_accuracy(name):
    import torch

    from distree import load_checkpoint

    model, meta = load_checkpoint(ROOT / name)
    with torch.no_grad():
        out = model(torch.zeros(2, *meta["input_shape"]))
    assert len(out) == meta["num_nodes"]
    assert all(o.logits.shape == (2, meta["num_classes"]) for o in out)
    final = json.loads((ROOT / name / "history.json").read_text())[-1]["val_acc"]
    assert len(final) == meta["num_nodes"]
    card = " ".join(_card_section(name).split())
    for acc in final:
        assert f"{100 * acc:.2f}" in card, f"the model card of {name} does not state exit accuracy {100 * acc:.2f}"


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_policies_load_and_were_calibrated_on_their_checkpoint(name):
    from distree import load_policy

    meta = json.loads((ROOT / name / "model.json").read_text())
    for f in sorted((ROOT / name / "policies").glob("*.json")):
        policy = load_policy(f)
        assert policy.num_nodes == meta["num_nodes"]
        trace = json.loads(f.read_text())["calibration"]["trace"]
        assert trace["checkpoint"] == f"checkpoints/{name}" and trace["model"] == meta["model"]
        assert f"`policies/{f.name}`" in _card_section(name), f"{f} is not in {name}'s model card"
