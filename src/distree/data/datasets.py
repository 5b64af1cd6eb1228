"""Datasets as in-memory uint8 image tensors with labels, class names and normalisation.

Supported sources (``load_split(name, split, data_dir)``):

- ``cifar10``: the standard python-pickle folder ``cifar-10-batches-py`` (torchvision's layout);
  ``data_dir`` may be that folder or its parent.
- ``mnist`` / ``fashion-mnist``: idx files ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` in ``data_dir``.
- ``imagefolder``: ``data_dir/<class>/*.png|jpg`` (one folder per class), or ``data_dir/train/<class>``
  and ``data_dir/test/<class>``.
- ``digits``: the 8x8 handwritten digits embedded in the package (1,797 images, the test set of the
  UCI Optical Recognition of Handwritten Digits data, CC BY 4.0; see ``digits.md`` next to this file).
- ``synthetic``: class prototypes plus noise, generated from a seed (tests).

Splits: ``train`` and ``val`` are carved from the training set with a seed (``val`` is for
calibration; it never overlaps ``train``), ``test`` is the source's test set (or a seeded hold-out
where the source has none). Nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DATASETS = ("cifar10", "mnist", "fashion-mnist", "imagefolder", "digits", "synthetic")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_KNOWN_NORM = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W), labels int64 (N,), plus what is needed to normalise them."""

    name: str
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # "crop-flip" for CIFAR-style augmentation
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: np.ndarray | torch.Tensor) -> ImageDataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageDataset(
            self.name,
            self.images[idx],
            self.labels[idx],
            self.classes,
            self.mean,
            self.std,
            self.augment,
            dict(self.meta),
        )

    def normalization(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}


def _carve(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


# ---------------------------------------------------------------- sources: (train, test) pairs


def _cifar10(data_dir: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    root = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if not (root / n).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found: expected the python-pickle folder 'cifar-10-batches-py' with "
            f"data_batch_1..5 and test_batch in {data_dir} (or {data_dir}/cifar-10-batches-py); "
            f"missing: {', '.join(missing)}. Pass --data-dir pointing at it."
        )

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(root / name, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d["labels"], dtype=np.int64)
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"CIFAR-10 file {root / name} is corrupt or not a CIFAR-10 pickle batch: {e}") from e
        if len(x) != len(y):
            raise DatasetError(f"CIFAR-10 file {root / name} has {len(x)} images but {len(y)} labels")
        return x, y

    parts = [read(n) for n in names]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read("test_batch")
    classes = CIFAR10_CLASSES
    meta = root / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                classes = list(pickle.load(f, encoding="latin1")["label_names"])
        except Exception:  # noqa: BLE001 - class names are optional
            log.warning("could not read %s; using the standard CIFAR-10 class names", meta)
    return train, test, classes


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = int.from_bytes(data[0:4], "big")
        ndim = magic & 0xFF
        if magic >> 8 != 0x08:
            raise ValueError(f"unexpected magic number {magic:#x} (want unsigned-byte idx)")
        dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims).copy()
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"idx file {path} is corrupt or truncated: {e}") from e


def _mnist(data_dir: Path, name: str):
    def find(stem: str) -> Path:
        for cand in (
            data_dir / stem,
            data_dir / f"{stem}.gz",
            data_dir / "raw" / stem,
            data_dir / "raw" / f"{stem}.gz",
        ):
            if cand.is_file():
                return cand
        raise DatasetError(
            f"{name}: expected idx file {stem}[.gz] in {data_dir} (the four files train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte). "
            "Pass --data-dir pointing at them."
        )

    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
        y = _read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(x) != len(y):
            raise DatasetError(f"{name} {prefix}: {len(x)} images but {len(y)} labels")
        return x[:, None, :, :], y

    classes = [str(i) for i in range(10)]
    if name == "fashion-mnist":
        classes = [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ]
    return pair("train"), pair("t10k"), classes


_IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _read_folder(root: Path, classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"imagefolder: expected one sub-folder per class in {root}, found none")
    images, labels, size = [], [], None
    for ci, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.suffix.lower() in _IMG_EXT) if (root / c).is_dir() else []
        for p in files:
            try:
                img = Image.open(p)
                img.load()
            except Exception as e:  # noqa: BLE001
                raise DatasetError(f"imagefolder: cannot read image {p}: {e}") from e
            mode = "L" if img.mode in ("L", "1", "I", "I;16") else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise DatasetError(
                    f"imagefolder: {p} has shape {arr.shape} but earlier images have {size}; "
                    "all images must share one size and mode (resize them first)"
                )
            images.append(arr)
            labels.append(ci)
    if not images:
        raise DatasetError(f"imagefolder: no images ({', '.join(sorted(_IMG_EXT))}) under {root}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _imagefolder(data_dir: Path, test_fraction: float, seed: int):
    if not data_dir.is_dir():
        raise DatasetError(f"imagefolder: {data_dir} is not a folder; expected one sub-folder per class")
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        xtr, ytr, classes = _read_folder(data_dir / "train")
        xte, yte, _ = _read_folder(data_dir / "test", classes)
        return (xtr, ytr), (xte, yte), classes
    x, y, classes = _read_folder(data_dir)
    tr, te = _carve(len(x), test_fraction, seed + 1)
    return (x[tr], y[tr]), (x[te], y[te]), classes


def _digits(test_fraction: float):
    from importlib.resources import files

    with files(__package__).joinpath("digits.npz").open("rb") as f, np.load(f, allow_pickle=False) as d:
        counts, target = d["data"], d["target"]  # (1797, 64) pixel counts 0..16, digits 0..9
    x = np.clip(np.round(counts.reshape(-1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)[
        :, None
    ]  # (1797, 1, 8, 8)
    y = target.astype(np.int64)
    tr, te = _carve(len(x), test_fraction, 12345)  # fixed: the test split never changes with --seed
    return (x[tr], y[tr]), (x[te], y[te]), [str(i) for i in range(10)]


def make_synthetic(
    n: int = 600, num_classes: int = 4, shape: tuple[int, int, int] = (1, 8, 8), noise: float = 0.35, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Class prototypes plus Gaussian noise; easy enough for a tiny CNN, hard enough to make exits differ."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 1, size=(num_classes, *shape))
    y = rng.integers(0, num_classes, size=n)
    x = protos[y] + rng.normal(0, noise, size=(n, *shape))
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y.astype(np.int64)


def load_split(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> ImageDataset:
    """Load one split (``train``/``val``/``test``) of a dataset. See the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    name = name.lower()
    augment = "none"
    if name == "cifar10":
        train, test, classes = _cifar10(_need_dir(name, data_dir))
        augment = "crop-flip"
    elif name in ("mnist", "fashion-mnist"):
        train, test, classes = _mnist(_need_dir(name, data_dir), name)
    elif name == "imagefolder":
        train, test, classes = _imagefolder(_need_dir(name, data_dir), test_fraction, seed)
    elif name == "digits":
        train, test, classes = _digits(test_fraction)
    elif name == "synthetic":
        x, y = make_synthetic()
        tr, te = _carve(len(x), test_fraction, 999)
        train, test, classes = (x[tr], y[tr]), (x[te], y[te]), [f"c{i}" for i in range(int(y.max()) + 1)]
    else:
        raise ValueError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    xtr, ytr = train
    if name in _KNOWN_NORM:
        mean, std = _KNOWN_NORM[name]
    else:
        mean, std = _stats(torch.from_numpy(np.ascontiguousarray(xtr)))
    if split == "test":
        x, y = test
    else:
        tr_idx, val_idx = _carve(len(xtr), val_fraction, seed)
        idx = tr_idx if split == "train" else val_idx
        x, y = xtr[idx], ytr[idx]
    if len(x) == 0:
        raise DatasetError(f"{name} split {split!r} is empty (val_fraction={val_fraction}); choose a larger fraction")
    return ImageDataset(
        name=name,
        images=torch.from_numpy(np.ascontiguousarray(x)),
        labels=torch.from_numpy(np.ascontiguousarray(y)),
        classes=list(classes),
        mean=tuple(mean),
        std=tuple(std),
        augment=augment,
        meta={"split": split, "val_fraction": val_fraction, "seed": seed, "data_dir": str(data_dir or "")},
    )


def _need_dir(name: str, data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise DatasetError(f"{name} needs --data-dir (nothing is downloaded); 'digits' needs none")
    p = Path(data_dir).expanduser()
    if not p.exists():
        raise DatasetError(f"{name}: data directory {p} does not exist")
    return p
