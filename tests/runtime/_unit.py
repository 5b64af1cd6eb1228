"""Helpers of the node unit tests: a node core with a fake successor, a fake backend and a manual clock.

No sockets and no processes: the successor is :class:`distree.runtime.fake.FakeLink`, time is a
:class:`distree.runtime.clock.ManualClock` (compute takes no time on it), and the backend decides
which rows are confident from the rows themselves, so which rows exit is known in advance.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from distree.checkpoint import save_checkpoint
from distree.models import create_model
from distree.policies import ExitPolicy, create_policy
from distree.runtime import load_spec
from distree.runtime.clock import ManualClock
from distree.runtime.core import NodeCore
from distree.runtime.fake import FakeLink, answer_all, features
from distree.runtime.protos import node_pb2
from distree.runtime.spec import ClusterSpec
from distree.runtime.spec_toml import spec_toml

T = TypeVar("T")
CLASSES = 10
#: thresholds of the confidence policy: a confident row (max probability ~1) exits, an unsure one (0.1) goes on
THRESHOLDS = [0.5, 0.5, 0.5, 0.0]


class TagBackend:
    """Row r is confident when its first value is 1 and unsure when it is 0; its second value is a tag
    that travels with it. Features for the successor are the input itself."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        self.batches.append(len(x))
        flat = x.reshape(len(x), -1)
        logits = np.zeros((len(x), CLASSES), np.float32)
        logits[:, 0] = 20.0 * flat[:, 0]
        return x.copy(), logits, logits.copy()


def rows(shape: tuple[int, ...], confident: list[int], tags: list[float]) -> np.ndarray:
    """Inputs of a node: one row per entry, first value ``confident``, second value the tag."""
    x = np.zeros((len(tags), *shape), np.float32)
    flat = x.reshape(len(tags), -1)
    flat[:, 0] = confident
    flat[:, 1] = tags
    return x


def tag_answers(req: node_pb2.ForwardRequest, *, exit_node: int = 3, **timing: float) -> node_pb2.ForwardResponse:
    """The successor answers every row at ``exit_node`` with the row's tag as its score."""
    resp = answer_all(req, exit_node=exit_node, **timing)
    for a, tag in zip(resp.answers, features(req).reshape(len(req.request_ids), -1)[:, 1], strict=True):
        a.score = float(tag)
    return resp


@dataclass
class Unit:
    root: Path
    model: Any
    sidecar: dict
    policy: ExitPolicy
    policy_path: Path
    checkpoint: Path

    def spec(self, name: str = "unit", **options: Any) -> ClusterSpec:
        nodes = [{"address": f"127.0.0.1:{7000 + k}"} for k in range(4)]  # never dialled: the link is a fake
        path = self.root / f"{name}.toml"
        path.write_text(spec_toml(self.checkpoint, self.policy_path, nodes, **options))
        return load_spec(path)

    def core(
        self,
        k: int = 2,
        *,
        clock: ManualClock | None = None,
        link: FakeLink | None = None,
        policy: ExitPolicy | None = None,
        spec: ClusterSpec | None = None,
        backend: Any = None,
    ) -> NodeCore:
        clock = clock or ManualClock()
        if link is None and k < 4:
            link = FakeLink(tag_answers, from_node=k, clock=clock)
        return NodeCore(
            spec or self.spec(),
            k,
            model=self.model,
            sidecar=self.sidecar,
            policy=policy or self.policy,
            backend=backend or TagBackend(),
            link=link,
            clock=clock,
        )

    def in_shape(self, k: int) -> tuple[int, ...]:
        return tuple(self.model.input_shape) if k == 1 else tuple(self.model.cost_profile().hop_shapes[k - 2])


def make_unit(root: Path) -> Unit:
    model = create_model("small-cnn", num_nodes=4, num_classes=CLASSES, width=8)
    ck = save_checkpoint(
        model,
        root / "ckpt",
        classes=[str(i) for i in range(CLASSES)],
        normalization={"mean": [0.0] * model.input_shape[0], "std": [1.0] * model.input_shape[0]},
    )
    policy = create_policy("confidence", 4, THRESHOLDS)
    path = policy.save(root / "confidence.json")
    return Unit(root, model, {}, policy, path, ck)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def submit(
    core: NodeCore, ids: list[str], x: np.ndarray, deadline: float | list[float] = math.inf, state: Any = None
) -> Any:
    """Submit rows with one deadline each (a list) or the same for all (a float)."""
    dl = list(deadline) if isinstance(deadline, list) else [float(deadline)] * len(ids)
    return await core.submit(ids, x, state or {}, dl)
