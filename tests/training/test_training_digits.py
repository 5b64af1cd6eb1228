"""Acceptance: a 4-node model trained with the DistrEE objective on the embedded digits data."""

from distree.data import load_split
from distree.training import TrainConfig, exit_accuracies, train


def test_digits_distree_reaches_95_percent_and_every_exit_beats_chance(tmp_path):
    cfg = TrainConfig(
        model="small-cnn", num_nodes=4, dataset="digits", epochs=8, batch_size=64, lr=0.05, objective="distree"
    )
    res = train(cfg, tmp_path)
    accs = exit_accuracies(res.model, load_split("digits", "test"))
    assert accs[-1] >= 0.95, accs
    assert all(a > 0.2 for a in accs), accs  # chance is 0.1 on 10 classes
