"""Tensors on the wire: numpy arrays <-> raw bytes + dtype + shape, with strict validation."""

from __future__ import annotations

import math

import numpy as np

from .protos import node_pb2


class BadTensor(ValueError):
    """A tensor on the wire does not match what the receiver expects (the message says how)."""


def to_proto(a: np.ndarray) -> node_pb2.Tensor:
    return node_pb2.Tensor(dtype=a.dtype.name, shape=a.shape, data=a.tobytes())  # tobytes is C order


def check_features(
    got_dtype: str,
    shape: tuple[int, ...],
    nbytes: int | None,
    *,
    dtype: str,
    row_shape: tuple[int, ...],
    max_rows: int,
) -> None:
    """Check a (B, *row_shape) tensor's dtype, shape, batch size and byte count (None: not known yet)."""
    if got_dtype != dtype:
        raise BadTensor(f"features dtype is {got_dtype!r}, this node expects {dtype!r}")
    if len(shape) != 1 + len(row_shape) or shape[1:] != tuple(row_shape):
        raise BadTensor(f"features shape is {list(shape)}, this node expects [B, {', '.join(map(str, row_shape))}]")
    if not 1 <= shape[0] <= max_rows:
        raise BadTensor(f"batch size {shape[0]} is outside 1..{max_rows}")
    want = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes is not None and nbytes != want:
        raise BadTensor(f"features carry {nbytes} bytes but shape {list(shape)} of {dtype} needs {want}")


def from_proto(t: node_pb2.Tensor, *, dtype: str, row_shape: tuple[int, ...], max_rows: int) -> np.ndarray:
    """Decode and check a (B, *row_shape) tensor of ``dtype`` (one writable copy of the message bytes)."""
    shape = tuple(t.shape)
    data = t.data  # each access of a bytes field makes a new bytes object: read it once
    check_features(t.dtype, shape, len(data), dtype=dtype, row_shape=row_shape, max_rows=max_rows)
    return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


def check_finite(x: np.ndarray, what: str) -> None:
    # a finite sum means every value is finite (NaN/inf propagate); only a non-finite sum (or an
    # overflow of huge finite values) needs the element-wise look
    if x.dtype.kind == "f" and not math.isfinite(x.sum()) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise BadTensor(f"{what} contains {bad} NaN/inf value(s); send finite numbers")
