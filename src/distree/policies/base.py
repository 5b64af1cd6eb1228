"""The exit-policy interface: one object, three users.

Offline evaluation (vectorised over a whole trace), the simulator and a live node (one request
or a batch) all call the same two methods:

- ``score(node, logits, features, state) -> (scores, new_state)``: a pure, vectorised function of
  what node ``node`` knows about each of B requests: its exit's logits (B, K) and feature vectors
  (B, F), plus the small ``state`` carried from earlier nodes (a dict of arrays with leading
  dimension B). A request exits when its score reaches the node's threshold.
- ``decide(ExitInputs) -> Decision``: scores, compares with ``thresholds[node]``, applies the QoS
  rule (exit now when the estimated time to continue exceeds the time left before the deadline)
  and always exits at the last node.

Because scores depend only on exits up to ``node`` (never on earlier decisions), offline
evaluation computes the (n, N) score matrix once and any threshold vector is scored in
microseconds; that is what makes calibration fast. State must stay small: it travels between
nodes with the request (:func:`encode_state` / :func:`decode_state`).
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._schema import FORMAT_VERSION
from ..errors import PolicyError
from ._params import validate_params
from .thresholds import exit_mask

State = dict[str, np.ndarray]
POLICY_FORMAT = "distree-policy/1"


@dataclass
class ExitInputs:
    """What node ``node`` knows when it decides for a batch of B requests."""

    node: int  # 0-based
    logits: np.ndarray  # (B, K)
    features: np.ndarray | None = None  # (B, F)
    state: State = field(default_factory=dict)  # arrays with leading dimension B
    remaining_s: np.ndarray | float | None = None  # (B,) seconds left before each deadline; None: no deadline
    continue_s: np.ndarray | float | None = None  # estimated seconds to reach the next node's answer
    labels: np.ndarray | None = None  # (B,) only for non-deployable policies (oracle)


@dataclass
class Decision:
    exit: np.ndarray  # (B,) bool: answer here
    scores: np.ndarray  # (B,) float
    state: State  # state for the requests that continue (all B rows; rows that exit are ignored)
    qos: np.ndarray  # (B,) bool: exit forced by the latency budget


class ExitPolicy(abc.ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`score`.

    A subclass with parameters declares them as keyword-only constructor arguments with type hints
    and defaults, and passes them on to this constructor by name; they are validated here against
    that signature (:mod:`distree.policies._params`) and kept in :attr:`params`.
    """

    name: ClassVar[str] = "base"
    deployable: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    #: whether calibration should search this policy's thresholds
    tunable: ClassVar[bool] = True
    #: how the policy pays for exit heads: ``"visited"`` (every visited node evaluates its head to
    #: decide) or ``"final"`` (no early-exit decisions: only the answering node's head runs); see
    #: :mod:`distree.policies.thresholds`
    heads: ClassVar[str] = "visited"
    #: the reference every saving is measured against (last-exit inference), not a trade-off of its own
    baseline: ClassVar[bool] = False

    def __init__(self, num_nodes: int, thresholds: Any = None, **params: Any) -> None:
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int | np.integer) or num_nodes < 1:
            raise PolicyError(f"{self.name}: num_nodes must be an integer >= 1, got {num_nodes!r}")
        self.num_nodes = int(num_nodes)
        self.params: dict[str, Any] = validate_params(type(self), params, source=f"policy {self.name!r}")
        if thresholds is None:
            thresholds = self.default_thresholds()
        try:
            self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise PolicyError(f"{self.name}: thresholds must be numbers, one per node: {e}") from None
        if self.thresholds.shape != (self.num_nodes,):
            raise PolicyError(
                f"{self.name}: need one threshold per node ({self.num_nodes}), got {self.thresholds.shape[0]}"
            )
        self.calibration: dict[str, Any] = {}

    # ------------------------------------------------------------ to implement
    def default_thresholds(self) -> np.ndarray:
        """Thresholds that never exit early (the last node always exits anyway)."""
        return np.full(self.num_nodes, np.inf)

    @abc.abstractmethod
    def score(
        self,
        node: int,
        logits: np.ndarray,
        features: np.ndarray | None,
        state: State,
        labels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, State]:
        """Vectorised score of B requests at ``node`` (higher = more ready to exit) and the new state."""

    # ------------------------------------------------------------ shared logic
    def init_state(self, batch: int) -> State:
        return {}

    def decide(self, inp: ExitInputs) -> Decision:
        logits = np.asarray(inp.logits, dtype=np.float32)
        if logits.ndim != 2:
            raise ValueError(f"logits must be (B, K), got shape {logits.shape}")
        b = logits.shape[0]
        if not 0 <= inp.node < self.num_nodes:
            raise ValueError(f"node {inp.node} out of range for a {self.num_nodes}-node policy")
        state = inp.state if inp.state else self.init_state(b)
        scores, new_state = self.score(inp.node, logits, inp.features, state, inp.labels)
        exit_ = exit_mask(scores, self.thresholds, inp.node)
        qos = np.zeros(b, dtype=bool)
        if inp.node < self.num_nodes - 1 and inp.remaining_s is not None and inp.continue_s is not None:
            qos = ~exit_ & (np.asarray(inp.remaining_s) < np.asarray(inp.continue_s))
            qos = np.broadcast_to(qos, (b,)).copy()
            exit_ = exit_ | qos
        return Decision(exit=exit_, scores=scores, state=new_state, qos=qos)

    def score_matrix(
        self, logits: np.ndarray, features: list[np.ndarray] | None = None, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of every sample at every node, (n, N), for offline evaluation and calibration."""
        n, nn_, _ = logits.shape
        if nn_ != self.num_nodes:
            raise PolicyError(f"trace has {nn_} exits but the policy is for {self.num_nodes} nodes")
        out = np.empty((n, nn_), dtype=np.float64)
        state = self.init_state(n)
        for i in range(nn_):
            f = features[i] if features is not None else None
            out[:, i], state = self.score(i, logits[:, i], f, state, labels)
        return out

    # ------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": POLICY_FORMAT,
            "format_version": FORMAT_VERSION,
            "policy": self.name,
            "num_nodes": self.num_nodes,
            "deployable": self.deployable,
            "thresholds": [None if not np.isfinite(t) else float(t) for t in self.thresholds],
            "thresholds_inf": [("inf" if t > 0 else "-inf") if not np.isfinite(t) else None for t in self.thresholds],
            "params": self.params,
            "calibration": self.calibration,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def with_thresholds(self, thresholds: Any) -> ExitPolicy:
        p = type(self)(self.num_nodes, thresholds, **self.params)
        p.calibration = dict(self.calibration)
        return p

    def __repr__(self) -> str:
        th = ", ".join(f"{t:.4g}" for t in self.thresholds)
        return f"{type(self).__name__}(num_nodes={self.num_nodes}, thresholds=[{th}], params={self.params})"


def thresholds_from_json(values: list[Any], inf_marks: list[Any] | None = None) -> np.ndarray:
    out = []
    for i, v in enumerate(values):
        if v is None:
            mark = (inf_marks or [None] * len(values))[i]
            out.append(-np.inf if mark == "-inf" else np.inf)
        else:
            out.append(float(v))
    return np.asarray(out, dtype=np.float64)


def encode_state(state: State) -> bytes:
    """Serialise a (small) policy state for the wire (safetensors bytes)."""
    from safetensors.numpy import save

    if not state:
        return b""
    return save({k: np.ascontiguousarray(v) for k, v in state.items()})


def decode_state(data: bytes) -> State:
    from safetensors.numpy import load

    if not data:
        return {}
    try:
        return dict(load(data))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"policy state is corrupt: {e}") from e


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax, (B, K) → (B, K), float32."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
