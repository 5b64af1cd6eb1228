from test_own_model_acceptance import make_package
from typer.testing import CliRunner

from distree.cli import app

runner = CliRunner()


def test_help_lists_subcommands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("train", "trace", "demo", "models"):
        assert cmd in res.output


def test_train_then_trace(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--model",
            "small-cnn",
            "--nodes",
            "2",
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").is_file() and (out / "history.json").is_file()
    tr = tmp_path / "val.trace.safetensors"
    res = runner.invoke(app, ["trace", "--checkpoint", str(out), "--split", "val", "--out", str(tr)])
    assert res.exit_code == 0, res.output
    from distree.trace import load_trace

    t = load_trace(tr)
    assert t.num_nodes == 2 and t.num_samples == 48  # 10% of the 480 synthetic training samples


def test_missing_dataset_is_one_clear_message(tmp_path):
    res = runner.invoke(
        app, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2
    assert "cifar-10-batches-py" in res.output and "Traceback" not in res.output


def test_bad_objective_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["train", "--objective", "magic", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip() == "error: training config: 'objective' must be 'ce', 'ce+kd' or 'distree', got 'magic'"


def test_models_lists_entry_points_with_their_arguments(tmp_path, monkeypatch):
    make_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "ownzoo-vgg" in res.output.split() and "wrn-16-2" in res.output.split()
    res = runner.invoke(app, ["models", "--args", "ownzoo-*"])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "ownzoo-vgg (entry point of ownzoo, ownzoo.nets:vgg)" in out
    assert "num_classes=10, in_channels=1, input_size=8, width=1.0" in out and "wrn-16-2" not in out


def test_bad_model_arguments_fail_before_any_data_is_read(tmp_path, monkeypatch):
    make_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]
    res = runner.invoke(app, [*base, "--model", "ownzoo-vgg", "--model-args", "depht=2"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "takes no argument 'depht'; it accepts:" in out and "width=1.0" in out
    res = runner.invoke(app, [*base, "--model", "ownzoo.nets:vgg", "--model-args", "{bad json"])
    assert res.exit_code == 2 and "not valid JSON" in res.output
    res = runner.invoke(app, [*base, "--model", "nowhere_mod_q:vgg"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "needs module 'nowhere_mod_q'" in out and "Traceback" not in out
