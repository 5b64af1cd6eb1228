"""The interface every node backend implements: one object per node segment (segment K + exit K).

A backend takes the node's input as a float32 numpy array and returns numpy arrays, so the code that
calls it (trace recording, device profiling, the runtime) is the same whichever engine computes.
This module imports numpy only.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import DistreeError

#: Backend names accepted by ``distree trace --backend`` and ``distree profile-device --backend``.
BACKENDS = ("torch", "onnx", "onnx-int8")


class BackendError(DistreeError, RuntimeError):
    """A backend cannot be built or run; the message names the file or setting and the fix."""


#: (hop tensor for the next node or None on the last node, logits (B, K), exit features (B, F))
NodeOutput = tuple[np.ndarray | None, np.ndarray, np.ndarray]


@runtime_checkable
class SegmentBackend(Protocol):
    """One node's computation: backbone segment ``index`` followed by its exit head.

    - ``index``: 0-based position in the chain (node number ``index + 1``), as in
      ``MultiExitNetwork.forward_segment(index, h)``.
    - ``in_shape``: the shape of one input row, without the batch axis (node 0: the normalised image;
      node K: node K-1's hop tensor).
    - ``run(x)``: ``x`` is float32 ``(B, *in_shape)`` with any ``B >= 1``; returns ``(h, logits, feats)``:
      ``h`` float32 ``(B, *hop_shape)`` for node ``index + 1`` (``None`` on the last node), ``logits``
      float32 ``(B, num_classes)``, ``feats`` float32 ``(B, F)`` (the exit's feature vector, the input of
      its last linear layer; what traces record and the policies compare between nodes).
    """

    name: str
    index: int
    num_nodes: int
    in_shape: tuple[int, ...]
    num_classes: int

    @property
    def is_last(self) -> bool: ...

    def run(self, x: np.ndarray) -> NodeOutput: ...

    def describe(self) -> dict[str, Any]: ...


def check_input(x: Any, in_shape: tuple[int, ...], where: str) -> np.ndarray:
    """Validate a node input: a float32 numpy array of shape (B, *in_shape), B >= 1; returns it C-contiguous."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{where}: input must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{where}: input must be float32, got {x.dtype}; convert with x.astype(np.float32)")
    if x.ndim != len(in_shape) + 1 or tuple(x.shape[1:]) != tuple(in_shape) or x.shape[0] < 1:
        raise ValueError(
            f"{where}: input must have shape (B, {', '.join(str(s) for s in in_shape)}) with B >= 1, "
            f"got {tuple(x.shape)}"
        )
    return np.ascontiguousarray(x)


def run_chain(backends: list[SegmentBackend], x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run every node in order on ``x`` (no early exit); returns ``[(logits, feats)]`` per node."""
    outs: list[tuple[np.ndarray, np.ndarray]] = []
    h: np.ndarray | None = x
    for b in backends:
        if h is None:
            raise BackendError(f"node {b.index + 1} got no input: its predecessor is marked as the last node")
        h, logits, feats = b.run(h)
        outs.append((logits, feats))
    return outs
