"""Exit policies: one object used by offline evaluation, calibration, the simulator and live nodes.

Owns the :class:`ExitPolicy` interface, the registry and policy files, every policy, and what a
threshold vector means and what its exits cost (:mod:`.thresholds`: the exit rule and the
``heads`` cost accounting). Imports numpy (and safetensors for policy state on the wire) only,
never another ``distree`` package.
"""

from . import confidence as _confidence  # noqa: F401  (registers policies)
from . import distree_conf as _distree_conf  # noqa: F401
from . import distree_policy as _distree_policy  # noqa: F401
from . import entropy as _entropy  # noqa: F401
from . import last_exit as _last_exit  # noqa: F401
from . import oracle as _oracle  # noqa: F401
from . import patience as _patience  # noqa: F401
from . import random_policy as _random_policy  # noqa: F401
from . import similarity as _similarity  # noqa: F401
from .base import Decision, ExitInputs, ExitPolicy, State, decode_state, encode_state, softmax
from .registry import (
    DEFAULT_PARAMS,
    DEFAULT_POLICY,
    create_default_policy,
    create_policy,
    list_policies,
    load_policy,
    policy_from_dict,
    register_policy,
)
from .thresholds import HEADS_MODES, exit_mask, exit_nodes, node_costs, relative_costs

__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_POLICY",
    "HEADS_MODES",
    "Decision",
    "ExitInputs",
    "ExitPolicy",
    "State",
    "create_default_policy",
    "create_policy",
    "decode_state",
    "encode_state",
    "exit_mask",
    "exit_nodes",
    "list_policies",
    "load_policy",
    "node_costs",
    "policy_from_dict",
    "register_policy",
    "relative_costs",
    "softmax",
]
