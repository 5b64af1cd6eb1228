"""Data loading: CIFAR-10, MNIST-family idx files, image folders, sklearn digits, synthetic."""

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
