import gzip
import pickle

import numpy as np
import pytest
import torch

from distree.data import DatasetError, crop_flip, iterate_batches, load_split, normalize


def _fake_cifar(root, n=20, corrupt=None):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d / name, "wb") as f:
            if name == corrupt:
                f.write(b"not a pickle")
            else:
                pickle.dump(
                    {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}, f
                )
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def test_cifar10_pickle_layout(tmp_path):
    root = _fake_cifar(tmp_path)
    tr = load_split("cifar10", "train", root, val_fraction=0.2)
    va = load_split("cifar10", "val", root, val_fraction=0.2)
    te = load_split("cifar10", "test", root)
    assert len(tr) == 80 and len(va) == 20 and len(te) == 20
    assert tr.input_shape == (3, 32, 32) and tr.augment == "crop-flip"
    assert tr.classes[0] == "class0"
    # the folder itself works too
    assert len(load_split("cifar10", "test", root / "cifar-10-batches-py")) == 20


def test_val_is_disjoint_from_train_and_seeded(tmp_path):
    root = _fake_cifar(tmp_path)
    a = load_split("cifar10", "val", root, val_fraction=0.2, seed=1)
    b = load_split("cifar10", "val", root, val_fraction=0.2, seed=1)
    c = load_split("cifar10", "val", root, val_fraction=0.2, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    tr = load_split("cifar10", "train", root, val_fraction=0.2, seed=1)
    rows = {bytes(x.numpy().tobytes()) for x in tr.images}
    assert not any(bytes(x.numpy().tobytes()) in rows for x in a.images)


def test_missing_cifar_says_what_was_expected_where(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py.*data_batch_1"):
        load_split("cifar10", "train", tmp_path)
    with pytest.raises(DatasetError, match="needs --data-dir"):
        load_split("cifar10", "train", None)


def test_corrupt_cifar_names_the_file(tmp_path):
    root = _fake_cifar(tmp_path, corrupt="data_batch_3")
    with pytest.raises(DatasetError, match="data_batch_3 is corrupt"):
        load_split("cifar10", "train", root)


def _idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    sfx = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    _idx(tmp_path / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (30, 28, 28)), gz)
    _idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (30,)), gz)
    _idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (10, 28, 28)), gz)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (10,)), gz)
    ds = load_split("mnist", "test", tmp_path)
    assert ds.input_shape == (1, 28, 28) and len(ds) == 10
    assert ds.mean == (0.1307,)


def test_truncated_idx_is_a_clear_error(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 9]))
    _idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(9), False)
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 2, 2)), False)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(1), False)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is corrupt or truncated"):
        load_split("mnist", "train", tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(np.full((6, 6, 3), i * 40, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    tr = load_split("imagefolder", "train", tmp_path, test_fraction=0.2, val_fraction=0.0)
    te = load_split("imagefolder", "test", tmp_path, test_fraction=0.2)
    assert tr.classes == ["cat", "dog"] and len(tr) + len(te) == 10
    assert tr.input_shape == (3, 6, 6)
    Image.fromarray(np.zeros((7, 7, 3), dtype=np.uint8)).save(tmp_path / "cat" / "odd.png")
    with pytest.raises(DatasetError, match="odd.png has shape"):
        load_split("imagefolder", "train", tmp_path)


def test_digits_is_embedded_and_test_split_is_fixed():
    a = load_split("digits", "test", seed=0)
    b = load_split("digits", "test", seed=5)
    assert torch.equal(a.images, b.images) and len(a) == 359
    assert load_split("digits", "train").input_shape == (1, 8, 8)


def test_embedded_digits_are_the_uci_data_read_without_scikit_learn():
    import hashlib
    import json
    import subprocess
    import sys
    from importlib.resources import files

    with files("distree.data").joinpath("digits.npz").open("rb") as f, np.load(f, allow_pickle=False) as d:
        data, target, source = d["data"], d["target"], str(d["source"])
    assert data.shape == (1797, 64) and data.dtype == np.uint8 and data.max() == 16
    assert np.bincount(target).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # checksums of the values written by experiments/make_digits_npz.py from scikit-learn's copy
    assert hashlib.sha256(data.tobytes()).hexdigest().startswith("8f26b2bd9d135c25")
    assert hashlib.sha256(target.tobytes()).hexdigest().startswith("8ba4f891220f5e4c")
    assert "CC BY 4.0" in source and "10.24432/C50P49" in source
    assert "CC BY 4.0" in files("distree.data").joinpath("digits.md").read_text()
    # pixel counts 0..16 scaled to 0..255; the three splits partition the 1,797 images
    splits = [load_split("digits", s) for s in ("train", "val", "test")]
    assert sum(len(s) for s in splits) == 1797
    x = torch.cat([s.images for s in splits]).reshape(1797, 64).numpy().astype(np.int64)
    want = np.clip(np.round(data * (255.0 / 16.0)), 0, 255).astype(np.int64)
    assert sorted(map(bytes, x.astype(np.uint8))) == sorted(map(bytes, want.astype(np.uint8)))
    code = (
        "import sys\nfrom distree.data import load_split\nload_split('digits', 'test')\nprint('sklearn' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and json.loads(res.stdout.strip().lower()) is False, res.stderr


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_split("imagenet", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_split("digits", "dev")


def test_batches_are_normalised_and_augmentation_keeps_shape():
    ds = load_split("synthetic", "train")
    x, y = next(iterate_batches(ds, 16))
    ref = normalize(ds.images[:16], ds.mean, ds.std)
    torch.testing.assert_close(x, ref)
    g = torch.Generator().manual_seed(0)
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = crop_flip(img, g, pad=2)
    assert out.shape == img.shape
    # every output pixel is either padding (0) or a pixel of the same image and channel
    assert set(out[0, 0].unique().tolist()) <= set(img[0, 0].unique().tolist()) | {0.0}
