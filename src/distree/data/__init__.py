"""Data loading: CIFAR-10, MNIST-family idx files, image folders, the embedded 8x8 digits, synthetic.

Owns the dataset sources as in-memory uint8 tensors, the seeded train/val carve-out, normalisation,
batching and augmentation. May import torch and numpy (and Pillow for image folders), never another
``distree`` package.
"""

from .datasets import DATASETS, SPLITS, DatasetError, ImageDataset, load_split, make_synthetic
from .loader import crop_flip, iterate_batches, normalize

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetError",
    "ImageDataset",
    "crop_flip",
    "iterate_batches",
    "load_split",
    "make_synthetic",
    "normalize",
]
